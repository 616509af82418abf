"""Throughput and memory of lit-qsum's QLoRA path against the standard Hugging Face QLoRA recipe (issue #5).

  python benchmarks/speed.py --shapes kobart bart-large t5-large --tools hf lit-qsum --warmup 5 --steps 30
  python benchmarks/speed.py --lit-variant default='{}' --lit-variant pad64='{"data": {"pad_to_multiple_of": 64}}'
  python benchmarks/speed.py --smoke                  # CPU, tiny shapes, fp32: checks the harness, not speed

Both tools train the same random-init weights (one folder per shape, loaded with ``from_pretrained``) on
the same seeded synthetic token ids: encoder lengths lognormal around 270 tokens (cap 512), summaries
around 49 (cap 200). One epoch is ``--steps`` batches; the warm-up (default: one whole epoch) runs first,
so the timed window sees batch shapes the warm-up has seen (what a long run looks like once each shape's
one-off costs, a CUDA-graph capture or a compile, are paid; those costs are reported on their own).
``--profile-steps`` more steps then run under torch.profiler for each tool's GPU kernel time per
non-pad token (the figure for GPU-bound cards). Settings match: NF4 + double quant, bf16,
LoRA r16/alpha 32/dropout 0.05 on every attention and FFN linear, gradient checkpointing, micro-batch 16,
length-grouped batches, lr 2e-4, gradient clipping 1.0.

- ``hf``: ``prepare_model_for_kbit_training`` + ``get_peft_model`` + ``Seq2SeqTrainer`` (``Trainer`` for
  decoder-only shapes; paged_adamw_8bit, ``DataCollatorForSeq2Seq``, transformers' own length grouping).
- ``lit-qsum``: ``SummarizationModule(backend="qlora")`` in a Lightning ``Trainer`` (bf16-mixed, AdamW),
  fed by lit-qsum's ``LengthGroupedBatchSampler`` and ``Seq2SeqCollator`` (``CausalCollator``).
  ``--lit-variant NAME=JSON`` adds module kwargs (``{"module": {...}}``; dicts become the parameter's
  settings dataclass; ``{"module": {"backend": "unsloth"}}`` runs lit-qsum's Unsloth backend) and data
  settings (``{"data": {"pad_to_multiple_of": 64}}``).
- ``unsloth`` (decoder-only shapes, GPU): a plain loop over Unsloth's ``FastLanguageModel`` (4-bit, LoRA,
  its own checkpointing), AdamW, the same batches as lit-qsum: the reference for lit-qsum's Unsloth backend.

Decoder-only rows are prompt (a dialogue's length) + summary; the loss covers the summary tokens, and
tokens/s counts every non-pad token of the row.

Each (shape, tool, variant) runs in its own process, so peak memory and caches do not leak between
runs; a failed run becomes an error record. Reported per run: non-pad tokens/s (encoder + label tokens)
and step time over the timed steps (one ``synchronize`` at each end of the window), peak allocated and
reserved GiB from ``reset_peak_memory_stats`` after loading, MFU = tokens/s * 6N / peak bf16 dense FLOP/s
(N = every parameter of the full-precision model), and a loss check: the eval-mode loss of the first 16
samples through each tool's model before training, which must agree (both LoRA inits leave the base
function unchanged). Results: ``--out``/<UTC date>-<what>.{json,md}; an existing file is never replaced.

Random-init weights are cached under ``LIT_QSUM_CACHE`` (default ~/.cache/lit_qsum); point it inside the
checkout (e.g. ``outputs/cache``, git-ignored) to keep them across runs on a machine that keeps build outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS.parent)]  # shapes.py, and this checkout's lit_qsum
from shapes import SHAPES  # noqa: E402
from speed_common import DATA_DEFAULTS, LOSS_CHECK_SAMPLES, empty_record, lit_module_kwargs  # noqa: E402

RESULTS = Path(os.environ.get("LIT_QSUM_RESULTS", BENCHMARKS / "results"))
TOOLS = ("hf", "lit-qsum", "unsloth")
HF_VARIANT = "recipe"  # the variant name of the baseline's records
# CPU-sized shapes for --smoke; vocab and special ids come from the demo tokenizer
SMOKE_SHAPES: dict[str, dict] = {
    "tiny-t5": {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
                "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "tiny-bart": {"model_type": "bart", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
                  "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
                  "decoder_ffn_dim": 128, "max_position_embeddings": 128},
    "tiny-llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256},
}


@dataclasses.dataclass(frozen=True)
class LengthDist:
    """Token lengths: lognormal around ``median``, clamped to [minimum, cap]."""

    median: int
    cap: int
    minimum: int
    sigma: float = 0.5

    def sample(self, n: int, generator: torch.Generator) -> list[int]:
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.median * torch.exp(self.sigma * z)).round().clamp(self.minimum, self.cap).long().tolist()


# DialogSum-like: ~10% of dialogues hit the 512-token encoder cap; summaries rarely reach 200
LENGTHS = {"encoder": LengthDist(270, 512, 8), "decoder": LengthDist(49, 200, 4)}
SMOKE_LENGTHS = {"encoder": LengthDist(40, 64, 8), "decoder": LengthDist(12, 24, 4)}


# ---- parent: prepare each shape once, run every (shape, tool, variant) in its own process ----------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        # imported here, so the driver's process never loads the worker's training stack
        from speed_worker import run_worker  # noqa: PLC0415

        run_worker(Path(args.worker))
        return
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    stem = args.out / f"{date}-{args.what}"
    for path in (_sibling(stem, ".json"), _sibling(stem, ".md")):
        if path.exists():
            sys.exit(f"{path} exists; results are never overwritten: pass another --what, or move it away")
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lit-qsum-speed-") as tmp:
        for shape in args.shapes:
            info = prepare_shape(shape, args, Path(tmp))
            print(f"{shape}: {info['num_params']:,} parameters, weights at {info['model_path']}", flush=True)
            runs = [("hf", {"name": HF_VARIANT, "module": {}, "data": {}})] if "hf" in args.tools else []
            runs += [("lit-qsum", v) for v in args.lit_variants.values()] if "lit-qsum" in args.tools else []
            if "unsloth" in args.tools and info["task"] == "causal":
                runs.append(("unsloth", {"name": "plain-loop", "module": {}, "data": {}}))
            for tool, variant in runs:
                spec = {**info, "tool": tool, "variant": variant, "warmup": args.warmup, "steps": args.steps,
                        "profile_steps": args.profile_steps, "micro_batch": args.micro_batch, "seed": args.seed,
                        "smoke": args.smoke, "date": date}
                left = None if args.deadline_s is None else args.deadline_s - (time.monotonic() - started)
                timeout = worker_timeout(left, args.worker_timeout)
                if timeout is None:
                    why = f"not started: {left:.0f} s left of --deadline-s {args.deadline_s:.0f}"
                    print(f"{shape}/{tool}/{variant['name']}: {why}", flush=True)
                    records.append({**empty_record(spec), "error": why})
                else:
                    records.append(launch_worker(spec, Path(tmp), timeout, args.logs))
                # what has finished so far survives a parent killed by an outer time limit
                _sibling(stem, ".partial.json").write_text(json.dumps(records, indent=1))
    add_loss_diffs(records)
    write_results(stem, records, args)
    _sibling(stem, ".partial.json").unlink(missing_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", help="default: kobart bart-large t5-large (--smoke: tiny-t5 tiny-bart)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--warmup", type=int, help="optimizer steps before the timed window (default: --steps, one epoch)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps (one epoch of the data)")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps after the window under torch.profiler "
                        "(GPU kernel time per token; 0: none)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--lit-variant", action="append", default=[], metavar="NAME=JSON",
                        help='lit-qsum settings to measure, e.g. pad64=\'{"data": {"pad_to_multiple_of": 64}}\' '
                             '(repeatable; default: one variant "default" = {})')
    parser.add_argument("--seed", type=int, default=0, help="weights, data, LoRA init and sample order")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--what", help="results file name after the date (default seq2seq-qlora-speed[-smoke])")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, short sequences, fp32")
    parser.add_argument("--logs", type=Path, default=None, help="copy every run's full log into this folder")
    parser.add_argument("--worker-timeout", type=int, default=300, help="seconds before a run is killed")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="end every run by this many seconds after the start (runs are cut short or not started, "
                             "and the results are still written): keep it under the GPU machine's per-command limit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one spec file
    args = parser.parse_args(argv)
    if args.worker:
        return args
    args.warmup = args.steps if args.warmup is None else args.warmup
    if args.warmup < 1 or args.steps < 1 or args.micro_batch < 1 or args.profile_steps < 0:
        parser.error("--warmup, --steps and --micro-batch must be >= 1 (the first step warms allocators up), "
                     "--profile-steps >= 0")
    known = benchmark_shapes()
    args.shapes = args.shapes or (["tiny-t5", "tiny-bart"] if args.smoke else ["kobart", "bart-large", "t5-large"])
    if unknown := [s for s in args.shapes if s not in known]:
        parser.error(f"--shapes: unknown {unknown}; known: {', '.join(known)}")
    args.what = args.what or ("seq2seq-qlora-speed-smoke" if args.smoke else "seq2seq-qlora-speed")
    try:
        args.lit_variants = parse_variants(args.lit_variant or ["default={}"])
        for variant in args.lit_variants.values():  # a bad variant fails here, before any model is built
            lit_module_kwargs(variant["name"], variant["module"])
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    return args


def benchmark_shapes() -> dict[str, dict]:
    """benchmarks/shapes.py's shapes and the smoke shapes, but those of FSDP's size (t5-xl), which one call can't fit."""
    return {name: c for name, c in {**SHAPES, **SMOKE_SHAPES}.items() if name != "t5-xl"}


def parse_variants(items: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME=JSON`` strings to ``{name: {"name", "module", "data"}}``; unknown keys are errors."""
    variants: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name or name in variants or name == HF_VARIANT:
            raise ValueError(f"--lit-variant {item!r}: expected a new NAME=JSON (names unique, not {HF_VARIANT!r})")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--lit-variant {name}: invalid JSON: {err}") from err
        if not isinstance(spec, dict) or set(spec) - {"module", "data"} or not all(
            isinstance(v, dict) for v in spec.values()
        ):
            raise ValueError(f'--lit-variant {name}: expected {{"module": {{...}}, "data": {{...}}}}, '
                             f"both optional; got {text}")
        if unknown := set(spec.get("data", {})) - set(DATA_DEFAULTS):
            raise ValueError(f"--lit-variant {name}: unknown data keys {sorted(unknown)}; known: {list(DATA_DEFAULTS)}")
        variants[name] = {"name": name, "module": spec.get("module", {}), "data": spec.get("data", {})}
    return variants


def prepare_shape(shape: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Save the shape's random-init weights (cached) and its synthetic data; count full-precision parameters."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: PLC0415

    from lit_qsum.backends.hf import config_from_dict, materialize_random_init, task_of  # noqa: PLC0415
    from lit_qsum.data.tokenizer import load_tokenizer  # noqa: PLC0415

    tokenizer = load_tokenizer("lit_qsum:demo")
    config = config_from_dict(benchmark_shapes()[shape], tokenizer)
    task = task_of(config)
    model_path = materialize_random_init(config, args.seed, tokenizer, device=None if args.smoke else torch.device("cuda", 0))
    auto = AutoModelForSeq2SeqLM if task == "seq2seq" else AutoModelForCausalLM
    with torch.device("meta"):
        num_params = sum(p.numel() for p in auto.from_config(config).parameters())
    n = args.micro_batch * args.steps  # one epoch is the timed window; full batches only, so no tool drops one
    samples = synthetic_samples(n, config.vocab_size, tokenizer.eos_token_id,
                                SMOKE_LENGTHS if args.smoke else LENGTHS, args.seed, causal=task == "causal")
    data_path = tmp / f"{shape}-data.pt"
    torch.save(samples, data_path)
    return {"shape": shape, "model_path": str(model_path), "data_path": str(data_path), "num_params": num_params,
            "pad_token_id": tokenizer.pad_token_id, "task": task}


def synthetic_samples(
    n: int, vocab_size: int, eos_id: int, lengths: dict[str, LengthDist], seed: int, causal: bool = False
) -> list[dict[str, list[int]]]:
    """``n`` samples of uniform token ids in [5, vocab_size - 1] (clear of special ids), each ending in eos.

    Seq2seq: ``input_ids`` (encoder) and ``labels``; decoder-only: ``prompt_ids`` and ``target_ids`` of the same
    lengths, as lit-qsum's data module makes them (the recipe's rows are their concatenation).
    """
    generator = torch.Generator().manual_seed(seed)
    encoder, decoder = lengths["encoder"].sample(n, generator), lengths["decoder"].sample(n, generator)
    samples = []
    for enc, dec in zip(encoder, decoder):
        ids = torch.randint(5, vocab_size, (enc + dec,), generator=generator).tolist()
        if causal:
            samples.append({"prompt_ids": ids[:enc], "target_ids": ids[enc:-1] + [eos_id]})
        else:
            samples.append({"input_ids": ids[: enc - 1] + [eos_id], "labels": ids[enc:-1] + [eos_id]})
    return samples


def _sibling(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (not ``with_suffix``: shape names like qwen2.5-1.5b carry dots)."""
    return stem.parent / (stem.name + suffix)


MIN_RUN_S = 30  # less than this can't load a model and time a step


def worker_timeout(left_s: float | None, cap_s: int) -> int | None:
    """A run's time limit with ``left_s`` seconds to the deadline (None: no deadline), or None: don't start it."""
    if left_s is None:
        return cap_s
    if left_s < MIN_RUN_S:
        return None
    return int(min(cap_s, left_s - 5))  # 5 s to copy its log and write the results


def launch_worker(spec: dict[str, Any], tmp: Path, timeout: int, logs: Path | None = None) -> dict[str, Any]:
    """Run one spec in a fresh process (its whole log copied into ``logs``); a failure becomes a record with
    ``error`` set."""
    label = f"{spec['shape']}/{spec['tool']}/{spec['variant']['name']}"
    stem = tmp / label.replace("/", "--")
    spec = {**spec, "result_path": str(_sibling(stem, ".result.json"))}
    _sibling(stem, ".spec.json").write_text(json.dumps(spec))
    start = time.perf_counter()
    error = None
    with _sibling(stem, ".log").open("w") as log:
        try:
            done = subprocess.run([sys.executable, __file__, "--worker", str(_sibling(stem, ".spec.json"))],
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            if done.returncode != 0:
                error = f"worker exited with status {done.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout} s (--worker-timeout)"
    result_path = Path(spec["result_path"])
    record = json.loads(result_path.read_text()) if result_path.exists() else {}
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(_sibling(stem, ".log"), logs / _sibling(stem, ".log").name)
    if error or record.get("error"):
        tail = _sibling(stem, ".log").read_text().splitlines()[-15:]
        print(f"{label}: FAILED ({record.get('error') or error})\n  " + "\n  ".join(tail), flush=True)
        record = {**empty_record(spec), **record, "error": record.get("error") or error}
    else:
        print(f"{label}: {record['tokens_per_s']:,.0f} tokens/s, {record['step_time_s']:.3f} s/step, peak "
              f"{_cell(record['peak_allocated_gib'])} GiB allocated, eval loss {record['loss_check']['eval_loss']:.5f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return record


def add_loss_diffs(records: list[dict[str, Any]]) -> None:
    """Each lit-qsum loss check gets its relative difference to the hf loss of the same shape."""
    hf_loss = {r["shape"]: r["loss_check"]["eval_loss"] for r in records if r["tool"] == "hf" and r["loss_check"]}
    for r in records:
        if r["tool"] == "lit-qsum" and r["loss_check"] and r["shape"] in hf_loss:
            reference = hf_loss[r["shape"]]
            r["loss_check"]["rel_diff_vs_hf"] = abs(r["loss_check"]["eval_loss"] - reference) / abs(reference)


def write_results(stem: Path, records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    ok = next((r for r in records if not r["error"]), None)
    gpu, versions = (ok["gpu"], ok["versions"]) if ok else ("unknown (every run failed)", {})
    lengths = SMOKE_LENGTHS if args.smoke else LENGTHS
    variants = ", ".join(f"{n} = `{json.dumps({k: v[k] for k in ('module', 'data') if v[k]})}`"
                         for n, v in args.lit_variants.items())
    lines = [
        f"# {args.what}", "",
        f"- command: `python benchmarks/speed.py {shlex.join(sys.argv[1:])}`",
        f"- card: {gpu}; date: {records[0]['date'] if records else ''}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- micro-batch {args.micro_batch}, {args.warmup} warm-up + {args.steps} timed + {args.profile_steps} profiled "
        "optimizer steps per run (one epoch = the timed steps), seed "
        f"{args.seed}; synthetic ids, encoder lengths lognormal median {lengths['encoder'].median} (cap "
        f"{lengths['encoder'].cap}), decoder median {lengths['decoder'].median} (cap {lengths['decoder'].cap})",
        "- both: NF4 + double quant, " + ("fp32 on CPU (smoke)" if args.smoke else "bf16")
        + ", LoRA r16/alpha 32/dropout 0.05 on all attention+FFN linears, gradient checkpointing, lr 2e-4, clip 1.0; "
        "hf = prepare_model_for_kbit_training + Seq2SeqTrainer ("
        + ("adamw_torch" if args.smoke else "paged_adamw_8bit") + ", group_by_length); "
        "lit-qsum = SummarizationModule(backend=qlora) + Lightning (AdamW, LengthGroupedBatchSampler)",
        f"- lit-qsum variants: {variants}",
        "- GPU µs / token: CUDA kernel time over the profiled steps after the window / their non-pad tokens; GPU busy: "
        "that kernel time / the profiled steps' wall time (profiler on); a "
        "CUDA graph's memory is in its own pool, counted by peak reserved, not by peak allocated",
        "- tokens/s: non-pad encoder + label tokens of the timed steps / their wall time, one-time CUDA-graph "
        "captures of new batch shapes included; steady tokens/s: the same over the timed steps that captured no "
        "graph, timed by CUDA events between step ends (what a long run's steps take once its shapes are captured; "
        "the captures' count and seconds are their own columns); "
        "MFU = tokens/s * 6N / peak bf16 dense FLOP/s, N = all parameters of the full-precision model; "
        "non-pad share: non-pad / padded tokens of the timed batches (each tool groups lengths its own way)", "",
    ]
    for shape in args.shapes:
        rows = [r for r in records if r["shape"] == shape]
        hf = next((r["tokens_per_s"] for r in rows if r["tool"] == "hf" and r["tokens_per_s"]), None)
        hf_steady = next((r.get("steady_tokens_per_s") for r in rows if r["tool"] == "hf" and not r["error"]), None)
        lines += [f"## {shape} ({rows[0]['num_params']:,} parameters)" if rows else f"## {shape}", "",
                  "| tool | variant | tokens/s | vs hf | steady tokens/s | steady vs hf | step time s | GPU µs / token "
                  "| GPU busy | peak allocated GiB | peak reserved GiB | MFU | non-pad share | first step s "
                  "| graphs (captures, s) | timed steps with a capture |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["error"]:
                lines.append(f"| {r['tool']} | {r['variant']} | error: {r['error'][:120]} |" + " |" * 13)
                continue
            ratio = f"{r['tokens_per_s'] / hf:.3f}" if hf else "-"
            steady = r.get("steady_tokens_per_s")
            steady_cell = "-" if steady is None else f"{steady:,.0f}"
            steady_ratio = f"{steady / hf_steady:.3f}" if steady is not None and hf_steady else "-"
            in_window = r.get("captures_in_window_steps")
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
            gpu_us = "-" if r.get("gpu_time_per_token_us") is None else f"{r['gpu_time_per_token_us']:.1f}"
            busy = "-" if r.get("gpu_busy_share") is None else f"{100 * r['gpu_busy_share']:.0f}%"
            graphs = "-" if r.get("graph_captures") is None else f"{r['graph_captures']}, {r['graph_capture_s']:.1f}"
            first = "-" if r.get("first_step_s") is None else f"{r['first_step_s']:.1f}"
            cells = [r["tool"], r["variant"], f"{r['tokens_per_s']:,.0f}", ratio, steady_cell, steady_ratio,
                     f"{r['step_time_s']:.3f}", gpu_us, busy, _cell(r["peak_allocated_gib"]),
                     _cell(r["peak_reserved_gib"]), mfu, f"{r['non_pad_share']:.3f}", first, graphs,
                     "-" if in_window is None else f"{in_window} of {args.steps}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## loss check: eval-mode loss of the first {LOSS_CHECK_SAMPLES} samples before training "
              + ("(fp32)" if args.smoke else "(bf16 autocast)"), "",
              "| shape | variant | hf | lit-qsum | relative difference |", "|---|---|---|---|---|"]
    for r in records:
        if r["tool"] == "lit-qsum" and r["loss_check"]:
            hf_loss = next((h["loss_check"]["eval_loss"] for h in records
                            if h["tool"] == "hf" and h["shape"] == r["shape"] and h["loss_check"]), None)
            diff = r["loss_check"].get("rel_diff_vs_hf")
            lines.append(f"| {r['shape']} | {r['variant']} | {'-' if hf_loss is None else f'{hf_loss:.5f}'} | "
                         f"{r['loss_check']['eval_loss']:.5f} | {'-' if diff is None else f'{diff:.2e}'} |")
    args.out.mkdir(parents=True, exist_ok=True)
    with _sibling(stem, ".json").open("x") as f:  # "x": never replace a file that appeared meanwhile
        json.dump(records, f, indent=1)
    with _sibling(stem, ".md").open("x") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(f"wrote {stem}.json and {stem}.md", flush=True)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


if __name__ == "__main__":
    main()
