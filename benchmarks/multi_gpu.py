"""Several GPUs through the real CLI: t5-large QLoRA DDP on 1 and 2 GPUs (same micro-batch per GPU), and FSDP QLoRA of
a t5-xl shape (3B) on 2 GPUs with each GPU's peak memory. One command, under 9 minutes on 2 x H100:

  PYTHONPATH=$PWD/.device-site:$PWD python benchmarks/multi_gpu.py --out benchmarks/results
  python benchmarks/multi_gpu.py --smoke --out /tmp/smoke        # CPU: tiny shapes, 2 gloo processes, a few steps

Every run is ``python -m lit_qsum fit --config configs/multi-gpu.yaml`` (or ``configs/fsdp-qlora.yaml``) with a
random-init model of a ``benchmarks/shapes.py`` shape (bf16 weights, built once here before any timing) and a CSV of
synthetic long dialogues (5 bundled dialogues joined, cut to 272 tokens; their 5 summaries as the target). A
``BenchRecorder`` callback times the optimizer steps after the warmup (one device sync at each end), sums the ranks'
non-pad tokens and gathers every rank's ``torch.cuda.max_memory_allocated``. The FSDP run then validates two batches
(generate under FSDP) and writes a checkpoint, which is checked. Writes ``<date>-multi-gpu.json`` (one record per
run) and ``<date>-multi-gpu.md`` into ``--out`` and prints the table; a failed run is recorded with its log's tail
(the full log goes next to the results) and the others still run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # shapes.py next to this file, lit_qsum from the checkout
from benchmarks.shapes import SHAPES  # noqa: E402

# NVLink multicast off in every child (the GPU machine's NCCL/NVSHMEM would try it); values already set are kept
CHILD_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
SMOKE_SHAPE = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
               "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
ENCODER_TOKENS, DECODER_TOKENS = 272, 72


class BenchRecorder(Callback):
    """Times optimizer steps ``warmup_steps + 1 ..`` to the last, sums all ranks' tokens, gathers each rank's peak.

    On GPUs each timed step is also timed by CUDA events, and a step in which any rank captured a CUDA graph (a new
    batch shape: about a second, once) is marked, so the record also has the steady tokens/s of the other steps.
    """

    def __init__(self, out: str, warmup_steps: int = 10) -> None:
        self.out = Path(out)
        self.warmup_steps = warmup_steps
        self._t0: float | None = None
        self._tokens: torch.Tensor | None = None
        self._samples = 0
        self._result: dict[str, Any] = {}
        self._at_start = 0.0
        self._load = 0.0
        self._sanity = 0.0
        self._events: list[torch.cuda.Event] = []  # at the end of step warmup_steps, then of each timed step
        self._step_tokens: list[torch.Tensor] = []
        self._step_captured: list[bool] = []
        self._captures_seen = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # what each GPU holds once the strategy has placed (and FSDP sharded) the model: how much sharding saved
        device = trainer.strategy.root_device
        self._at_start = float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0
        if device.type == "cuda":
            # the sanity check's validation (loss + generate()) ran since on_fit_start: its peak is kept apart, and
            # the training peak starts here (until session 11 the FSDP run's "peak" was one from before training)
            self._sanity = float(torch.cuda.max_memory_allocated(device))
            torch.cuda.reset_peak_memory_stats(device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the module's setup (weights loaded, 4-bit quantized) and the strategy's wrapping (FSDP sharding),
        # before the sanity check: the loading peak
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self._load = float(torch.cuda.max_memory_allocated(device))
            torch.cuda.reset_peak_memory_stats(device)

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        graphs = getattr(pl_module, "step_graphs", None)
        captures = graphs.stats.captures if graphs is not None else 0
        captured, self._captures_seen = captures > self._captures_seen, captures
        if self._t0 is not None and step > self.warmup_steps and not self._result:
            tokens = torch.as_tensor(batch["num_tokens"]).detach()
            self._tokens = tokens if self._tokens is None else self._tokens + tokens
            self._samples += len(batch["index"])
            self._step_tokens.append(tokens)
            self._step_captured.append(captured)
            self._event(trainer)
        if self._t0 is None and step == self.warmup_steps:
            self._sync(trainer)
            self._t0 = time.perf_counter()
            self._event(trainer)
        if self._t0 is not None and step == trainer.max_steps and not self._result:
            self._sync(trainer)  # validation after the last step is not timed
            self._close(trainer, time.perf_counter() - self._t0, step - self.warmup_steps)

    def _event(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append(event)

    def _steady(self, trainer: L.Trainer) -> dict[str, Any]:
        """The timed steps in which no rank captured a graph: their count and tokens/s (rank 0's CUDA event times;
        the ranks wait for each other at every step's all-reduce)."""
        device = trainer.strategy.root_device
        per_step = torch.tensor([[float(t), float(c)] for t, c in zip(self._step_tokens, self._step_captured)],
                                dtype=torch.float64, device=device).reshape(-1, 2)
        tokens = trainer.strategy.reduce(per_step[:, 0].contiguous(), reduce_op="sum").tolist()
        any_captured = trainer.strategy.reduce(per_step[:, 1].contiguous(), reduce_op="sum").tolist()
        out: dict[str, Any] = {"timed_steps_with_a_capture": sum(c > 0 for c in any_captured),
                               "steady_tokens_per_s": None, "steady_steps": None}
        if len(self._events) != len(tokens) + 1:  # not on a GPU
            return out
        keep = [i for i, c in enumerate(any_captured) if c == 0]
        if keep:
            seconds = sum(self._events[i].elapsed_time(self._events[i + 1]) for i in keep) / 1e3
            out.update(steady_tokens_per_s=sum(tokens[i] for i in keep) / seconds, steady_steps=len(keep))
        return out

    def _close(self, trainer: L.Trainer, elapsed: float, steps: int) -> None:
        device = trainer.strategy.root_device
        counts = torch.stack([self._tokens.to(device=device, dtype=torch.float64),
                              torch.tensor(float(self._samples), dtype=torch.float64, device=device)])
        tokens, samples = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        steady = self._steady(trainer)
        cuda = device.type == "cuda"
        # a MemorySnapshot callback resets the peak counter at its step: take the peak it saw before, too
        before = max((getattr(cb, "peak_before_reset", 0) for cb in trainer.callbacks), default=0)
        peak = torch.tensor([float(max(torch.cuda.max_memory_allocated(device), before)) if cuda else 0.0,
                             float(torch.cuda.max_memory_reserved(device)) if cuda else 0.0, self._at_start,
                             self._load, self._sanity], device=device)
        peaks = trainer.strategy.all_gather(peak).reshape(-1, 5).tolist()
        self._result = {
            "tokens_per_s": tokens / elapsed, "samples_per_s": samples / elapsed, "step_time_s": elapsed / steps,
            "measured_steps": steps, "measured_tokens": int(tokens), "world_size": trainer.world_size,
            "peak_allocated_gib_per_gpu": [round(p[0] / 2**30, 3) for p in peaks],
            "peak_reserved_gib_per_gpu": [round(p[1] / 2**30, 3) for p in peaks],
            "allocated_at_train_start_gib_per_gpu": [round(p[2] / 2**30, 3) for p in peaks],
            # before training: loading the model and wrapping it (FSDP's sharding), then the sanity check's validation
            "peak_allocated_loading_gib_per_gpu": [round(p[3] / 2**30, 3) for p in peaks],
            "peak_allocated_sanity_validation_gib_per_gpu": [round(p[4] / 2**30, 3) for p in peaks],
            "gpu": torch.cuda.get_device_name(device) if cuda else "cpu",
            **steady,
        }
        if trainer.is_global_zero:
            self.out.write_text(json.dumps(self._result))


@dataclass
class Run:
    """One ``lit-qsum fit`` child process and what it is compared by."""

    name: str
    shape: str
    strategy: str
    gpus: int
    micro_batch: int
    config: str
    args: list[str]
    warmup: int
    timeout_s: int
    min_s: int = 90  # below this it is not worth starting
    record: dict[str, Any] = field(default_factory=dict)
    snapshot_step: int | None = None  # record this step's memory history (MemorySnapshot)
    variant: str = "default"  # an FSDP run with extra flags (--fsdp-variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for <date>-<what>.{json,md}")
    parser.add_argument("--what", default="multi-gpu", help="results file name after the date")
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny shapes, 2 gloo processes, a few steps")
    parser.add_argument("--micro-batch", type=int, default=16, help="t5-large micro-batch per GPU (DDP runs)")
    parser.add_argument("--fsdp-micro-batch", type=int, default=8, help="t5-xl micro-batch per GPU (FSDP run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ddp1", "ddp2", "fsdp2", "single-xl"],
                        help="runs to leave out")
    parser.add_argument("--fsdp-variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="one more FSDP run after single-xl, named fsdp2-NAME, with these lit-qsum flags added, e.g. "
                             "no-zero='--trainer.strategy.init_args.shard_optimizer_state false' (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data, checkpoints)")
    parser.add_argument("--snapshot-step", type=int, default=None,
                        help="record this optimizer step of the t5-xl runs (FSDP and one GPU) with torch's CUDA memory "
                             "history; each record gets what was live at the step's peak, by allocating code "
                             "(benchmarks/memory_snapshot.py)")
    parser.add_argument("--deadline-s", type=float, default=450, help="stop starting runs after this (the runs' "
                        "timeouts shrink so everything ends by then; the GPU machine allows 10 minutes a command)")
    args = parser.parse_args()
    try:
        args.fsdp_variants = parse_fsdp_variants(args.fsdp_variant)
    except ValueError as err:
        parser.error(str(err))
    started = time.time()
    date = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lit-qsum-multi-gpu-"))
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in CHILD_ENV.items()}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)

    shapes = {"large": SMOKE_SHAPE, "xl": SMOKE_SHAPE} if args.smoke else {"large": SHAPES["t5-large"], "xl": SHAPES["t5-xl"]}
    shapes = {k: {**v, "dtype": "float32" if args.smoke else "bfloat16"} for k, v in shapes.items()}
    log(started, f"work folder {work}; building random-init models and {'smoke' if args.smoke else 'long'} data")
    for shape in shapes.values():
        materialize(shape)
    data = write_long_dialogues(work / "long.csv", rows=200 if args.smoke else 2400)
    runs = plan(args, shapes, data, work)
    for run in runs:
        run.snapshot_step = args.snapshot_step if run.shape.endswith("xl") or args.smoke else None

    todo = [run for run in runs if run.name not in args.skip]
    for i, run in enumerate(todo):
        left = args.deadline_s - (time.time() - started)
        timeout = run_timeout(left, run.min_s, run.timeout_s, [later.min_s for later in todo[i + 1 :]])
        if timeout is None:
            run.record = {"error": f"not started: {left:.0f} s left of --deadline-s {args.deadline_s:.0f}, "
                                   f"it needs {run.min_s} s"}
            log(started, f"{run.name}: {run.record['error']}")
            continue
        run.timeout_s = timeout
        log(started, f"{run.name}: {run.shape} {run.strategy} on {run.gpus} {'process' if args.smoke else 'GPU'}(s), "
                     f"timeout {run.timeout_s} s")
        run.record = execute(run, work, env, args.out, date)
        log(started, f"{run.name}: " + (f"{run.record['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in run.record
                                          else f"FAILED: {run.record.get('error', '')[-300:]}"))
    records = [finish_record(run, args, date) for run in runs if run.record]
    write_results(args.out, date, records, args, time.time() - started)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if any("error" in r for r in records):
        sys.exit(1)


def run_timeout(left_s: float, min_s: int, timeout_s: int, later_min_s: list[int]) -> int | None:
    """The timeout of the next run with ``left_s`` seconds to the deadline, or None when it can't get its minimum.

    Runs go in the plan's order, which is their priority (DDP 1 and 2 GPUs first: the scaling figure). A run starts
    whenever its own minimum fits; it is cut short to leave the later runs their minimums only as far as its own
    minimum allows, so a short deadline drops the last runs, never the first.
    """
    if left_s < min_s:
        return None
    return int(min(timeout_s, max(min_s, left_s - sum(later_min_s))))


def log(started: float, message: str) -> None:
    print(f"[{time.time() - started:6.1f} s] {message}", flush=True)


def materialize(shape: dict) -> None:
    """Build and cache the random-init model once here, as the ranks would (same cache key), before any timing."""
    from lit_qsum.backends.loader import ModelSpec, resolve_checkpoint  # noqa: PLC0415
    from lit_qsum.data.tokenizer import load_tokenizer  # noqa: PLC0415

    device = torch.device("cuda", 0) if torch.cuda.is_available() else None  # the ranks draw on their GPU too
    resolve_checkpoint(ModelSpec(model_config=shape, tokenizer="lit_qsum:demo"), load_tokenizer("lit_qsum:demo"), device)


def write_long_dialogues(path: Path, rows: int) -> Path:
    """Dialogues of 5 bundled ones joined (~340 demo-tokenizer tokens, cut to 272 in training), their 5 summaries."""
    from lit_qsum.data.formats import ColumnMap, load_records  # noqa: PLC0415
    from lit_qsum.data.synthetic import bundled_path  # noqa: PLC0415

    records = load_records(bundled_path("train"), ColumnMap("fname", "dialogue", ["summary"], "topic"), require_summary=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "dialogue", "summary"])
        for i in range(rows):
            parts = [records[(5 * i + k) % len(records)] for k in range(5)]
            writer.writerow([f"long_{i}", "\n".join(r.dialogue for r in parts), " ".join(r.references[0] for r in parts)])
    return path


def plan(args: argparse.Namespace, shapes: dict[str, dict], data: Path, work: Path) -> list[Run]:
    smoke = args.smoke
    warmup, measured = (2, 3) if smoke else (5, 25)
    fsdp_warmup, fsdp_measured = (2, 3) if smoke else (3, 8)
    common = [
        "--trainer.max_epochs", "-1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.num_sanity_val_steps", "0", "--trainer.check_val_every_n_epoch", "null",
        "--model.model_name_or_path", "null", "--model.tokenizer", "lit_qsum:demo",
        "--data.train_path", str(data), "--data.val_path", str(data), "--data.encoder_max_len", str(ENCODER_TOKENS),
        "--data.decoder_max_len", str(DECODER_TOKENS), "--data.pad_to_multiple_of", "8", "--data.max_eval_samples", "64",
        "--data.num_workers", "0" if smoke else "2",
    ]
    cpu = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"] if smoke else []
    micro = 4 if smoke else args.micro_batch
    fsdp_micro = 4 if smoke else args.fsdp_micro_batch
    runs = []
    for gpus in (1, 2):
        steps = warmup + measured
        runs.append(Run(
            f"ddp{gpus}", "t5-large" if not smoke else "t5-tiny", "ddp", gpus, micro, "configs/multi-gpu.yaml",
            [*common, *cpu, "--trainer.devices", str(gpus), "--trainer.max_steps", str(steps),
             "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
             "--model.model_config", json.dumps(shapes["large"]), "--model.gradient_checkpointing", "false",
             "--data.batch_size", str(micro)],
            warmup=warmup, timeout_s=300 if smoke else 150, min_s=90,  # ddp2 took 60-65 s on two H200s (session 11 cut it at 60)
        ))
    steps = fsdp_warmup + fsdp_measured
    quant = (["--model.quantization.bnb_4bit_quant_storage", "float32", "--model.quantization.bnb_4bit_compute_dtype",
              "float32"] if smoke else [])
    runs.append(Run(
        "fsdp2", "t5-xl" if not smoke else "t5-tiny", "fsdp", 2, fsdp_micro, "configs/fsdp-qlora.yaml",
        [*common, *cpu, *quant, "--trainer.devices", "2", "--trainer.max_steps", str(steps),
         "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "2",
         "--model.model_config", json.dumps(shapes["xl"]), "--model.gradient_checkpointing", "true",
         "--model.accumulate_grad_batches", "1", "--model.generation", json.dumps({"num_beams": 1, "max_new_tokens": 16}),
         "--data.batch_size", str(fsdp_micro), "--data.eval_batch_size", str(fsdp_micro)],
        warmup=fsdp_warmup, timeout_s=300 if smoke else 200, min_s=60 if smoke else 120,
    ))
    # the same t5-xl QLoRA on one GPU (same micro-batch, checkpointing, bf16-stored 4-bit weights): the peak that FSDP's
    # per-GPU peak is compared with
    runs.append(Run(
        "single-xl", "t5-xl" if not smoke else "t5-tiny", "single", 1, fsdp_micro, "configs/fsdp-qlora.yaml",
        [*common, *cpu, *quant, "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_steps", str(steps),
         # the FSDP run's validation too (its sanity check before training and one after), so both records have a
         # validation peak beside the training peak
         "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "2",
         "--trainer.enable_checkpointing", "false",
         "--model.model_config", json.dumps(shapes["xl"]), "--model.gradient_checkpointing", "true",
         "--model.accumulate_grad_batches", "1", "--model.generation", json.dumps({"num_beams": 1, "max_new_tokens": 16}),
         "--data.batch_size", str(fsdp_micro), "--data.eval_batch_size", str(fsdp_micro)],
        warmup=fsdp_warmup, timeout_s=300 if smoke else 150, min_s=60 if smoke else 90,
    ))
    fsdp = runs[-2]
    # last: the FSDP/one-GPU ratio (fsdp2, single-xl) comes first where the deadline leaves time for less
    runs += [Run(f"fsdp2-{name}", fsdp.shape, "fsdp", 2, fsdp.micro_batch, fsdp.config, [*fsdp.args, *flags],
                 warmup=fsdp.warmup, timeout_s=fsdp.timeout_s, min_s=fsdp.min_s, variant=name)
             for name, flags in args.fsdp_variants.items()]
    for run in runs:
        run.args += ["--trainer.default_root_dir", str(work / run.name)]
    return runs


def parse_fsdp_variants(specs: list[str]) -> dict[str, list[str]]:
    """``NAME=FLAGS`` strings as {name: flags}; a bad one raises ValueError naming it."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name or not name.replace("-", "").isalnum() or name in variants:
            raise ValueError(f"--fsdp-variant {spec!r}: expected a new NAME (letters, digits, -) then =FLAGS")
        variants[name] = shlex.split(flags)
    return variants


def callbacks_yaml(run: Run, work: Path) -> Path:
    """The run's callback list: the recorder, plus a checkpoint at the end of the FSDP run (checked afterwards)."""
    entries = [{"class_path": "benchmarks.multi_gpu.BenchRecorder",
                "init_args": {"out": str(work / f"{run.name}.json"), "warmup_steps": run.warmup}}]
    if run.snapshot_step is not None:
        entries.append({"class_path": "benchmarks.memory_snapshot.MemorySnapshot",
                        "init_args": {"out": str(work / f"{run.name}-memory.json"), "step": run.snapshot_step}})
    if run.strategy == "fsdp":
        entries.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(work / run.name / "checkpoints"), "filename": "last",
                                      "enable_version_counter": False}})
    path = work / f"{run.name}-callbacks.json"  # JSON is YAML
    path.write_text(json.dumps(entries))
    return path


def execute(run: Run, work: Path, env: dict[str, str], out: Path, date: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "lit_qsum", "fit", "--config", str(REPO / run.config), *run.args,
               "--trainer.callbacks", str(callbacks_yaml(run, work))]
    log_path = work / f"{run.name}.log"
    t0 = time.time()
    try:
        with open(log_path, "w") as log_file:
            done = subprocess.run(command, cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  timeout=run.timeout_s)
        returncode = done.returncode
    except subprocess.TimeoutExpired:
        returncode = "timeout"
    wall = round(time.time() - t0, 1)
    result_path = work / f"{run.name}.json"
    if returncode != 0 or not result_path.exists():
        shutil.copy(log_path, out / f"{date}-multi-gpu-{run.name}.log")
        tail = log_path.read_text(errors="replace")[-3000:]
        return {"error": f"exit {returncode} after {wall} s; log {date}-multi-gpu-{run.name}.log:\n{tail}",
                "wall_s": wall, "command": command}
    record = json.loads(result_path.read_text())
    record.update(wall_s=wall, command=command)
    snapshot = work / f"{run.name}-memory.json"
    if snapshot.exists():
        record["memory_snapshot"] = json.loads(snapshot.read_text())
    if run.strategy == "fsdp":
        record["checkpoint"] = check_checkpoint(work / run.name / "checkpoints" / "last.ckpt")
    return record


def check_checkpoint(path: Path) -> dict[str, Any]:
    """What the FSDP run saved: adapter tensors only, optimizer state for them, the peft adapter folder."""
    if not path.exists():
        return {"ok": False, "why": f"{path.name} missing"}
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights = state["state_dict"]
    adapter = path.with_name(path.stem + ".adapter") / "adapter_model.safetensors"
    ok = bool(weights) and all("lora_" in k for k in weights) and adapter.exists() and len(
        state["optimizer_states"][0]["state"]) == len(weights)
    return {"ok": ok, "tensors": len(weights), "mb": round(path.stat().st_size / 2**20, 1), "adapter": adapter.exists()}


def versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "lightning", "transformers", "peft", "bitsandbytes"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def finish_record(run: Run, args: argparse.Namespace, date: str) -> dict[str, Any]:
    record = {"shape": run.shape, "tool": "lit-qsum", "gpus": run.gpus, "strategy": run.strategy, "variant": run.variant,
              "speed_settings": "the configs' defaults: fused LoRA, CUDA-graph steps, fused AdamW, no compile",
              "micro_batch": run.micro_batch, "warmup_steps": run.warmup, "encoder_tokens": ENCODER_TOKENS,
              "decoder_tokens": DECODER_TOKENS,
              "gradient_checkpointing": run.strategy in ("fsdp", "single"), "date": date, "versions": versions(),
              "smoke": args.smoke, **run.record}
    peaks = record.get("peak_allocated_gib_per_gpu")
    if peaks:
        record["peak_allocated_gib"] = max(peaks)
    return record


def write_results(out: Path, date: str, records: list[dict], args: argparse.Namespace, wall: float) -> None:
    (out / f"{date}-{args.what}.json").write_text(json.dumps(records, indent=1))
    by = {(r["strategy"], r["gpus"]): r for r in records if "tokens_per_s" in r and r["variant"] == "default"}
    ratio = (by[("ddp", 2)]["tokens_per_s"] / by[("ddp", 1)]["tokens_per_s"]
             if ("ddp", 1) in by and ("ddp", 2) in by else None)
    steady = (by[("ddp", 2)].get("steady_tokens_per_s"), by[("ddp", 1)].get("steady_tokens_per_s")) if ratio else None
    rows = ["| shape | strategy | variant | GPUs | micro-batch / GPU | tokens/s (all GPUs) | step s "
            "| steady tokens/s (timed steps without a graph capture) | timed steps with a capture "
            "| training peak allocated GiB per GPU | loading peak GiB per GPU | sanity-check validation peak GiB per GPU "
            "| allocated at train start GiB per GPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "tokens_per_s" in r:
            start, load, sanity = (", ".join(f"{p:.2f}" for p in r.get(key, [])) or "-" for key in (
                "allocated_at_train_start_gib_per_gpu", "peak_allocated_loading_gib_per_gpu",
                "peak_allocated_sanity_validation_gib_per_gpu"))
            steady_row = "-" if r.get("steady_tokens_per_s") is None else f"{r['steady_tokens_per_s']:,.0f}"
            rows.append(f"| {r['shape']} | {r['strategy']} | {r['variant']} | {r['gpus']} | {r['micro_batch']} "
                        f"| {r['tokens_per_s']:,.0f} | {r['step_time_s']:.3f} "
                        f"| {steady_row} | {r.get('timed_steps_with_a_capture', '-')} "
                        f"| {', '.join(f'{p:.2f}' for p in r['peak_allocated_gib_per_gpu'])} "
                        f"| {load} | {sanity} | {start} |")
        else:
            rows.append(f"| {r['shape']} | {r['strategy']} | {r['variant']} | {r['gpus']} | {r['micro_batch']} | failed "
                        "| | | | | | | |")
    gpu = next((r["gpu"] for r in records if "gpu" in r), "unknown")
    fsdp = next((r for r in records if r["strategy"] == "fsdp" and r["variant"] == "default"), None)
    lines = [
        "# Several GPUs: DDP scaling and FSDP QLoRA memory" + (" (CPU smoke run)" if args.smoke else ""),
        "",
        f"- card: {gpu}; date: {date}; versions: "
        + ", ".join(f"{k} {v}" for k, v in (records[0]["versions"] if records else {}).items()),
        f"- command: `python benchmarks/multi_gpu.py {shlex.join(sys.argv[1:])}`"
        f" ({wall:.0f} s in all); each run is `python -m lit_qsum fit --config configs/multi-gpu.yaml` "
        "(or `configs/fsdp-qlora.yaml`) with a random-init model of the shape (benchmarks/shapes.py), QLoRA r16, "
        "bf16-mixed, synthetic dialogues cut to "
        f"{ENCODER_TOKENS} input / {DECODER_TOKENS} summary tokens; tokens/s counts non-pad tokens of all GPUs over "
        "the optimizer steps after the warmup (DDP: "
        + ", ".join(f"{r['warmup_steps']} warmup + {r.get('measured_steps', '?')} timed" for r in records[:1])
        + ", no activation checkpointing; FSDP: activation checkpointing on, "
        + ", ".join(f"{r['warmup_steps']} + {r.get('measured_steps', '?')}" for r in records if r["strategy"] == "fsdp")
        + ")." + (" Smoke run: CPU processes on gloo, 32-true, float32-stored 4-bit weights, tiny shape; the "
                  "numbers only show that every path runs." if args.smoke else ""),
        "",
        *rows,
        "",
        (f"2 GPUs / 1 GPU (DDP, same micro-batch per GPU): **{ratio:.2f}x** tokens/s (target >= 1.8x)"
         if ratio else "2-GPU/1-GPU ratio: not measured (a DDP run "
         + ("failed)" if any(r["strategy"] == "ddp" for r in records) else "was left out: --skip)")),
    ]
    if steady and None not in steady:
        lines.append(f"The same over the timed steps without a CUDA-graph capture: **{steady[0] / steady[1]:.2f}x**")
    if fsdp and "checkpoint" in fsdp:
        lines.append(f"FSDP run: validated 2 batches with generate() and saved a checkpoint: {fsdp['checkpoint']}")
    single = next((r for r in records if r["strategy"] == "single" and "peak_allocated_gib" in r), None)
    if fsdp and single and "peak_allocated_gib" in fsdp and single["peak_allocated_gib"] > 0:  # 0 on the CPU
        lines.append(f"FSDP per-GPU training peak / one-GPU QLoRA training peak (t5-xl, same micro-batch): "
                     f"**{fsdp['peak_allocated_gib'] / single['peak_allocated_gib']:.0%}** (target <= 60%)")
        keys = ("peak_allocated_loading_gib_per_gpu", "peak_allocated_sanity_validation_gib_per_gpu")
        if all(r.get(key) for r in (fsdp, single) for key in keys):
            whole = [max(r["peak_allocated_gib"], *r[keys[0]], *r[keys[1]]) for r in (fsdp, single)]
            lines.append(f"The whole fit's peak (loading and the sanity check's validation counted): "
                         f"{whole[0]:.2f} / {whole[1]:.2f} GiB = {whole[0] / whole[1]:.0%}")
        for r in records:
            if r["strategy"] == "fsdp" and r["variant"] != "default" and "peak_allocated_gib" in r:
                lines.append(f"FSDP variant {r['variant']} ({shlex.join(args.fsdp_variants[r['variant']])}): "
                             f"{r['peak_allocated_gib'] / single['peak_allocated_gib']:.0%} of the one-GPU peak")
    for r in records:
        if "error" in r:
            lines += ["", f"{r['strategy']} ({r['variant']}) on {r['gpus']} GPU(s) failed:", "```", r["error"][-1500:], "```"]
    text = "\n".join(lines) + "\n"
    (out / f"{date}-{args.what}.md").write_text(text)
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
