"""The worker of ``benchmarks/speed.py``: one (shape, tool, variant) in this process.

``python benchmarks/speed.py --worker SPEC`` runs ``run_worker`` on a spec file the driver wrote; see speed.py's
docstring for what is measured and how.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from typing_extensions import override

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS.parent)]  # speed_common.py, and this checkout's lit_qsum
from speed_common import DATA_DEFAULTS, LORA, LOSS_CHECK_SAMPLES, empty_record, lit_module_kwargs  # noqa: E402

from lit_qsum.data.collate import IGNORE_INDEX, CausalCollator, Seq2SeqCollator  # noqa: E402

LEARNING_RATE = 2e-4
# bf16 dense tensor-core peak, FLOP/s; matched by substring of torch.cuda.get_device_name(), first hit wins
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12}
KERNEL_CATEGORIES = (  # first match wins; names of H200 kernels in this harness's tables
    ("attention", ("fmha", "flash", "sdpa", "attention", "cudnn_generated")),
    ("4-bit dequantize", ("dequantize", "nf4")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("dropout", ("dropout",)),
    ("GEMM", ("nvjet", "gemm", "cutlass", "xmma", "sm90_", "splitk")),
    ("norm", ("rms", "layer_norm", "norm")),
    ("copy / cast / memset", ("copy", "memcpy", "memset", "cast", "to_copy")),
    ("reduce", ("reduce",)),
    ("other elementwise", ("elementwise", "triton", "fill", "index", "gather", "scatter")),
)


def kernel_categories(kernels: list[tuple[str, float]], tokens: float | None) -> str:
    """Kernel time by kind (GEMM, attention, dropout...) of ``(name, µs)`` kernel events, as a small table: where the
    GPU time per token goes."""
    totals: dict[str, float] = {}
    for name, device_us in kernels:
        kind = next((kind for kind, words in KERNEL_CATEGORIES if any(w in name.lower() for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + device_us
    whole = sum(totals.values()) or 1.0
    lines = ["| kernel kind | ms | share | µs / token |", "|---|---|---|---|"]
    for kind, us in sorted(totals.items(), key=lambda item: -item[1]):
        per_token = f"{us / tokens:.2f}" if tokens else "-"
        lines.append(f"| {kind} | {us / 1e3:.1f} | {us / whole:.0%} | {per_token} |")
    return "\n".join(lines)


class StepWindow:
    """Non-pad tokens and wall time of optimizer steps ``warmup + 1 .. warmup + steps``, then GPU kernel time of the
    ``profile_steps`` after them.

    Token counts accumulate as tensors where the batch lives (no per-step sync); the device is synchronized
    only at the window's two ends, around the profiled steps and after the first step. On a GPU each timed step
    also ends with a CUDA event (no sync): the steady-state figure is the tokens of the timed steps that captured no
    CUDA graph over the GPU time between their events (a capture is a one-time cost per batch shape, reported
    apart: how many fell inside the window and what they cost). The profiled steps
    run under torch.profiler (CUDA activity only, unless ``LIT_QSUM_SPEED_PROFILE=DIR`` asks for a CPU + CUDA
    table in DIR, and ``LIT_QSUM_SPEED_TRACE`` a timeline: see ``_traced``), so their wall time is not part of tokens/s.
    """

    def __init__(self, warmup: int, steps: int, cuda: bool, profile_steps: int = 0, causal: bool = False) -> None:
        self.warmup, self.steps, self.cuda, self.profile_steps = warmup, steps, cuda, profile_steps
        self.causal = causal  # a decoder-only row holds its summary: count non-pad row tokens once
        self.tokens: torch.Tensor | None = None
        self.profiled_tokens: torch.Tensor | None = None
        self.padded = 0
        self.start = self.first_step_s = self.t0 = self.t1 = None
        self.profiler = None
        self.profile: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # what a tool adds to its record (lit-qsum: its CUDA-graph counts)
        self.step_tokens: list[torch.Tensor] = []  # per timed step, for the steady-state figure
        self.events: list[Any] = []  # CUDA events: the window's start, then one per timed step's end
        self.capture_steps: set[int] = set()  # timed steps (1-based optimizer steps) in which a graph was captured

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @property
    def last_step(self) -> int:
        return self.warmup + self.steps + self.profile_steps

    def train_start(self) -> None:
        self.start = self._now()

    def add(self, batch: dict[str, torch.Tensor], step: int) -> None:
        """Count the batch of optimizer step ``step`` (1-based) if it is timed or profiled."""
        if step <= self.warmup:
            return
        tokens = batch["attention_mask"].sum()
        padded = batch["input_ids"].numel()  # shapes are host-side: no sync
        if not self.causal:
            tokens = tokens + (batch["labels"] != IGNORE_INDEX).sum()
            padded += batch["labels"].numel()
        if step <= self.warmup + self.steps:
            self.tokens = tokens if self.tokens is None else self.tokens + tokens
            self.padded += padded
            self.step_tokens.append(tokens)
        else:
            self.profiled_tokens = tokens if self.profiled_tokens is None else self.profiled_tokens + tokens

    def step_end(self, step: int) -> None:
        """After optimizer step ``step`` (1-based)."""
        if step == 1:
            self.first_step_s = self._now() - self.start
        if step == self.warmup:
            self.t0 = self._now()
            self._event()
        elif self.warmup < step <= self.warmup + self.steps:
            self._event()
        if step == self.warmup + self.steps:
            self.t1 = self._now()
            if self.profile_steps:
                self._profile_start()
        if self.profile_steps and step == self.last_step:
            self._profile_stop()

    def _event(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.events.append(event)

    def mark_capture(self, step: int) -> None:
        """Optimizer step ``step`` (1-based) captured at least one CUDA graph."""
        if self.warmup < step <= self.warmup + self.steps:
            self.capture_steps.add(step)

    def steady(self) -> dict[str, Any]:
        """Tokens/s of the timed steps without a capture, by CUDA events (None off a GPU or if every step captured)."""
        captured = {"captures_in_window_steps": len(self.capture_steps), "steady_tokens_per_s": None,
                    "steady_steps": None}
        if not self.cuda or len(self.events) != self.steps + 1 or len(self.step_tokens) != self.steps:
            return captured
        keep = [i for i in range(self.steps) if self.warmup + 1 + i not in self.capture_steps]
        if not keep:
            return captured
        seconds = sum(self.events[i].elapsed_time(self.events[i + 1]) for i in keep) / 1e3
        tokens = int(sum(int(self.step_tokens[i]) for i in keep))
        return {**captured, "steady_tokens_per_s": tokens / seconds, "steady_steps": len(keep)}

    def _profile_start(self) -> None:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        table = bool(os.environ.get("LIT_QSUM_SPEED_PROFILE"))
        activities = ([ProfilerActivity.CPU] if table or not self.cuda else []) + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities)
        self.profiler.__enter__()
        self._p0 = self._now()

    def _profile_stop(self) -> None:
        if self.profiler is None:
            return
        wall = self._now() - self._p0
        self.profiler.__exit__(None, None, None)
        from torch.autograd import DeviceType  # noqa: PLC0415

        events = self.profiler.events()
        kernel_us = sum(e.device_time for e in events if e.device_type == DeviceType.CUDA)
        tokens = int(self.profiled_tokens) if self.profiled_tokens is not None else 0
        self.profile = {
            "gpu_time_per_token_us": kernel_us / tokens if self.cuda and tokens else None,
            "gpu_busy_share": kernel_us / 1e6 / wall if self.cuda and wall > 0 else None,
            "profiled_wall_s": wall,
        }
        if os.environ.get("LIT_QSUM_SPEED_PROFILE"):
            averages = self.profiler.key_averages()
            launches = sum(e.count for e in averages if "LaunchKernel" in e.key or "GraphLaunch" in e.key)
            out = Path(os.environ["LIT_QSUM_SPEED_PROFILE"])
            out.mkdir(parents=True, exist_ok=True)
            label = os.environ.get("LIT_QSUM_SPEED_PROFILE_LABEL", "run")
            sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
            text = [f"{self.profile_steps} steps after the timed window; {launches} kernel/graph launches; "
                    f"kernel time {kernel_us / 1e3:.1f} ms over {wall * 1e3:.1f} ms wall (CPU activity on)",
                    kernel_categories([(e.name, e.device_time) for e in events if e.device_type == DeviceType.CUDA],
                                      tokens),
                    averages.table(sort_by=sort, row_limit=60, max_name_column_width=110),
                    averages.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=110)]
            runtime = [e for e in averages if e.key.startswith("cu") and e.device_type != DeviceType.CUDA]
            text.append("CUDA runtime/driver calls on the host (waits show here: synchronize, blocking copies, "
                        "host allocations)\n" + "\n".join(
                            f"{e.key:<40} {e.count:>7} calls {e.self_cpu_time_total / 1e3:>10.1f} ms"
                            for e in sorted(runtime, key=lambda e: -e.self_cpu_time_total)))
            (out / f"profile-{label}.txt").write_text("\n".join(text))
            if _traced(label):  # the timeline, for where the GPU waits on the host
                self.profiler.export_chrome_trace(str(out / f"trace-{label}.json.gz"))  # gzipped by its suffix
        self.profiler = None

    def result(self) -> dict[str, Any]:
        if self.t0 is None or self.t1 is None or self.tokens is None:
            raise RuntimeError(f"the timed window did not complete (start {self.t0}, end {self.t1})")
        seconds, tokens = self.t1 - self.t0, int(self.tokens)
        return {"tokens_per_s": tokens / seconds, "step_time_s": seconds / self.steps, "timed_tokens": tokens,
                "non_pad_share": tokens / self.padded, "first_step_s": self.first_step_s,
                "gpu_time_per_token_us": self.profile.get("gpu_time_per_token_us"),
                "gpu_busy_share": self.profile.get("gpu_busy_share"), **self.steady()}


def _traced(label: str) -> bool:
    """``LIT_QSUM_SPEED_TRACE``: ``1`` exports every profiled run's timeline (gzipped Chrome trace), else a comma-separated
    list of the variant names to export (a trace of two steps of a 1.5B model is several MB)."""
    wanted = os.environ.get("LIT_QSUM_SPEED_TRACE", "")
    return wanted == "1" or any(label.endswith(f"-{name}") for name in wanted.split(",") if name)


def run_worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    record = empty_record(spec)
    os.environ.setdefault("LIT_QSUM_SPEED_PROFILE_LABEL", f"{spec['shape']}-{spec['tool']}-{spec['variant']['name']}")
    try:
        cuda = not spec["smoke"]
        record["gpu"] = torch.cuda.get_device_name() if cuda else "cpu"
        record["versions"] = library_versions()
        samples = torch.load(spec["data_path"], weights_only=True)
        features = [{**s, "index": i} for i, s in enumerate(samples)]
        causal = spec.get("task") == "causal"
        check = collator(spec, 8)(features[:LOSS_CHECK_SAMPLES])
        check = {k: check[k] for k in ("input_ids", "attention_mask", "labels")}
        window = StepWindow(spec["warmup"], spec["steps"], cuda, spec.get("profile_steps", 0), causal=causal)
        train = {"hf": train_hf, "lit-qsum": train_lit_qsum, "unsloth": train_unsloth_loop}[spec["tool"]]
        eval_loss = train(spec, features, check, window)
        record.update(window.result(), **window.extra,
                      loss_check={"eval_loss": eval_loss, "rel_diff_vs_hf": None})
        if cuda:
            record["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
            record["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
        peak = next((flops for name, flops in PEAK_FLOPS.items() if name in record["gpu"]), None)
        record["mfu"] = record["tokens_per_s"] * 6 * spec["num_params"] / peak if peak else None
    except BaseException as err:
        record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise
    finally:
        Path(spec["result_path"]).write_text(json.dumps(record))


def collator(
    spec: dict[str, Any], pad_to_multiple_of: int, target_multiple: int | None = None
) -> Seq2SeqCollator | CausalCollator:
    """lit-qsum's collator for the shape's task (decoder-only rows: prompt + summary, loss on the summary)."""
    kind = CausalCollator if spec.get("task") == "causal" else Seq2SeqCollator
    return kind(spec["pad_token_id"], pad_to_multiple_of, target_multiple)


def eval_loss_of(
    model: torch.nn.Module, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batch: dict[str, torch.Tensor], device: torch.device, autocast: bool,
) -> float:
    """Dropout-off loss of ``batch`` under bf16 autocast where training uses it; leaves ``model`` in train mode."""
    from bitsandbytes.nn import Linear4bit  # noqa: PLC0415

    model.eval()
    # On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit's weight for inference on its first
    # eval-mode no-grad call, for good: later training calls then run that inference kernel (bf16, no
    # input gradient; layers with a bias fail). Those layers have no dropout, so train mode changes nothing else.
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.train()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn({k: v.to(device) for k, v in batch.items()})
    model.train()
    return float(loss)


class HfStepTimer(TrainerCallback):
    """Feeds the Trainer's optimizer steps to a ``StepWindow``."""

    def __init__(self, window: StepWindow) -> None:
        self.window = window

    @override
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.window.train_start()

    @override
    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.window.step_end(state.global_step)


class _CountsTokens:
    """A ``Trainer`` mixin that counts the non-pad tokens of the timed window's batches."""

    def __init__(self, *args: Any, window: StepWindow, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = window

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        self.window.add(inputs, self.state.global_step + 1)  # this batch is step global_step + 1
        return super().training_step(model, inputs, num_items_in_batch)


class TokenCountingSeq2SeqTrainer(_CountsTokens, Seq2SeqTrainer):
    """``Seq2SeqTrainer`` that counts the timed window's tokens."""


class TokenCountingTrainer(_CountsTokens, Trainer):
    """``Trainer`` (decoder-only shapes) that counts the timed window's tokens."""


def train_hf(
    spec: dict[str, Any], features: list[dict], check: dict[str, torch.Tensor], window: StepWindow
) -> float:
    """The standard Hugging Face QLoRA recipe; returns the pre-training eval loss of ``check``."""
    import transformers  # noqa: PLC0415
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training  # noqa: PLC0415

    from lit_qsum.backends.lora_targets import default_target_modules  # noqa: PLC0415

    smoke = spec["smoke"]
    dtype = torch.float32 if smoke else torch.bfloat16
    transformers.set_seed(spec["seed"])
    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    placement = {} if smoke else {"device_map": {"": 0}}
    causal = spec.get("task") == "causal"
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSeq2SeqLM
    model = auto.from_pretrained(spec["model_path"], quantization_config=quant, dtype=dtype, **placement)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model_path"])
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], bias="none",
                      target_modules=default_target_modules(model.config.model_type, model),
                      task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_2_SEQ_LM)
    model = get_peft_model(model, lora)
    device = torch.device("cpu" if smoke else "cuda:0")
    eval_loss = eval_loss_of(model, lambda batch: model(**batch).loss, check, device, autocast=not smoke)
    if not smoke:
        torch.cuda.reset_peak_memory_stats()

    args = dict(output_dir=spec["result_path"] + ".trainer", per_device_train_batch_size=spec["micro_batch"],
                bf16=not smoke, use_cpu=smoke, optim="adamw_torch" if smoke else "paged_adamw_8bit",
                learning_rate=LEARNING_RATE, max_steps=window.last_step, logging_steps=10**6,
                save_strategy="no", report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
                seed=spec["seed"], disable_tqdm=True)
    # transformers 5 replaced group_by_length by train_sampling_strategy and renamed gradient_checkpointing
    # (a deprecated alias now); pass whichever this version has
    fields = {f.name for f in dataclasses.fields(transformers.Seq2SeqTrainingArguments)}
    args.update({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
                else {"group_by_length": True})
    args.update({"activation_checkpointing": True} if "activation_checkpointing" in fields
                else {"gradient_checkpointing": True})
    if causal:  # the row is prompt + summary, the loss on the summary only, as lit-qsum's CausalCollator makes it
        rows = [(f["prompt_ids"] + f["target_ids"], [IGNORE_INDEX] * len(f["prompt_ids"]) + f["target_ids"])
                for f in features]
    else:
        rows = [(f["input_ids"], f["labels"]) for f in features]
    # lengths for grouping are read from input_ids (tokenizer.model_input_names[0])
    dataset = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels} for ids, labels in rows]
    trainer = (TokenCountingTrainer if causal else TokenCountingSeq2SeqTrainer)(
        model=model, args=transformers.Seq2SeqTrainingArguments(**args), train_dataset=dataset,
        data_collator=transformers.DataCollatorForSeq2Seq(tokenizer, model, label_pad_token_id=IGNORE_INDEX,
                                                          pad_to_multiple_of=8),
        processing_class=tokenizer, callbacks=[HfStepTimer(window)], window=window,
    )
    trainer.train()
    return eval_loss


class LitStepTimer(Callback):
    """Loss check and peak reset once the model is built, then feeds optimizer steps to a ``StepWindow``.

    One loader batch is one optimizer step here (``accumulate_grad_batches`` 1), so steps are counted
    by batch, across epochs: a step the module skips for a non-finite loss still counts as time spent.
    The module's CUDA-graph counts are read when the timed window closes.
    """

    def __init__(self, window: StepWindow, check: dict[str, torch.Tensor], autocast: bool) -> None:
        self.window, self.check, self.autocast = window, check, autocast
        self.eval_loss: float | None = None
        self.batches = 0
        self.captures_seen = 0
        self.graphs: dict[str, Any] = {}

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.eval_loss = eval_loss_of(pl_module.model, pl_module._loss, self.check, pl_module.device, self.autocast)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.window.train_start()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches += 1
        self.window.add(batch, self.batches)
        self.window.step_end(self.batches)
        graphs = getattr(pl_module, "step_graphs", None)
        if graphs is not None and graphs.stats.captures > self.captures_seen:
            self.captures_seen = graphs.stats.captures
            self.window.mark_capture(self.batches)
        if self.batches == self.window.warmup + self.window.steps and graphs is not None:
            self.graphs = {"graph_captures": graphs.stats.captures, "graph_capture_s": graphs.stats.capture_s,
                           "graph_replays": graphs.stats.replays, "graphs_off": graphs.off_reason}


def train_lit_qsum(
    spec: dict[str, Any], features: list[dict], check: dict[str, torch.Tensor], window: StepWindow
) -> float:
    """lit-qsum's QLoRA path with the variant's settings; returns the pre-training eval loss of ``check``."""
    from lit_qsum.module import SummarizationModule  # noqa: PLC0415

    smoke, variant = spec["smoke"], spec["variant"]
    L.seed_everything(spec["seed"], verbose=False)
    module = SummarizationModule(
        model_name_or_path=spec["model_path"], tokenizer=spec["model_path"], init_seed=spec["seed"],
        optimizer=functools.partial(torch.optim.AdamW, lr=LEARNING_RATE, weight_decay=0.0),
        **lit_module_kwargs(variant["name"], variant["module"]),
    )
    loader = lit_loader(spec, features, {**DATA_DEFAULTS, **variant["data"]})
    timer = LitStepTimer(window, check, autocast=not smoke)
    trainer = L.Trainer(
        accelerator="cpu" if smoke else "gpu", devices=1, precision="32-true" if smoke else "bf16-mixed",
        max_steps=window.last_step, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
        callbacks=[timer], default_root_dir=spec["result_path"] + ".trainer",
    )
    trainer.fit(module, train_dataloaders=loader)
    assert timer.eval_loss is not None
    window.extra = timer.graphs
    return timer.eval_loss


def lit_loader(spec: dict[str, Any], features: list[dict], data: dict[str, Any]) -> DataLoader:
    """lit-qsum's training batches as its data module makes them: length-grouped (seeded; seq2seq sources in buckets
    of the padding multiple, then by target length), padded by the task's collator."""
    from lit_qsum.data.features import feature_parts  # noqa: PLC0415
    from lit_qsum.data.length_grouped_sampler import LengthGroupedBatchSampler  # noqa: PLC0415

    sampler = LengthGroupedBatchSampler([feature_parts(f) for f in features], spec["micro_batch"], seed=spec["seed"],
                                        bucket=data["pad_to_multiple_of"] if data["group_by_target"] else None)
    return DataLoader(features, batch_sampler=sampler,  # type: ignore[arg-type]  # a list is a map-style dataset
                      collate_fn=collator(spec, data["pad_to_multiple_of"], data["target_pad_to_multiple_of"]), num_workers=0,
                      pin_memory=not spec["smoke"])  # as the data module does on a GPU


def train_unsloth_loop(
    spec: dict[str, Any], features: list[dict], check: dict[str, torch.Tensor], window: StepWindow
) -> float:
    """The reference for lit-qsum's Unsloth backend: Unsloth's 4-bit model + LoRA in a plain PyTorch loop over the same
    batches (AdamW, bf16 autocast, clip 1.0); returns the pre-training eval loss of ``check``. GPU only."""
    if spec["smoke"] or spec.get("task") != "causal":
        raise RuntimeError("the plain Unsloth loop runs decoder-only shapes on a CUDA GPU")
    from unsloth import FastLanguageModel  # noqa: PLC0415 - patches transformers: import it in this worker only

    from lit_qsum.backends.lora_targets import default_target_modules  # noqa: PLC0415

    torch.manual_seed(spec["seed"])
    model, _ = FastLanguageModel.from_pretrained(model_name=spec["model_path"], max_seq_length=1024,
                                                 dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], bias="none",
        target_modules=default_target_modules(model.config.model_type, model), use_gradient_checkpointing="unsloth",
        random_state=spec["seed"],
    )
    device = torch.device("cuda", 0)
    model.train()
    eval_loss = eval_loss_of(model, lambda batch: model(**batch).loss, check, device, autocast=True)
    torch.cuda.reset_peak_memory_stats()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    loader = lit_loader(spec, features, dict(DATA_DEFAULTS))
    window.train_start()
    step, epoch = 0, 0
    while step < window.last_step:
        loader.batch_sampler.set_epoch(epoch)  # as Lightning's fit loop does: the same batches as lit-qsum's runs
        epoch += 1
        for batch in loader:
            step += 1
            batch = {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")}
            window.add(batch, step)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window.step_end(step)
            if step == window.last_step:
                break
    return eval_loss


def library_versions() -> dict[str, str]:
    import bitsandbytes  # noqa: PLC0415
    import peft  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "lightning": L.__version__}


def gib(n: float) -> float:
    return round(n / 2**30, 3)
