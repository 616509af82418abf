"""Measure live tensor memory by category at the peak of one training step: t5-xl-shaped QLoRA (fewer layers), under
QLoraFSDPStrategy on 2 CPU processes (gloo) and on one process without FSDP, through the real CLI
(``configs/fsdp-qlora.yaml`` + the overrides ``benchmarks/multi_gpu.py`` uses for its fsdp2 / single-xl runs).

  FM_EFFICIENT_ATTENTION=1 python benchmarks/fsdp_memory/run.py --mode fsdp --layers 4 --batch 8 --step 1 \
      --out /tmp/fm/ea-fsdp-L4-B8.json
  FM_EFFICIENT_ATTENTION=1 python benchmarks/fsdp_memory/run.py --mode single --layers 4 --batch 8 --step 1 \
      --out /tmp/fm/ea-single-L4-B8.json
  python benchmarks/fsdp_memory/extrapolate.py /tmp/fm/ea 4 6     # after L4 and L6 runs of both modes

Environment variables (FM_*) switch on GPU-like attention memory and the prototypes (patches.py). The random-init
model cache and data go to --work (default /tmp/fsdp-memory-work). Write-up: benchmarks/results/2026-11-30-fsdp-memory-cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.multi_gpu import DECODER_TOKENS, ENCODER_TOKENS, materialize, write_long_dialogues  # noqa: E402
from benchmarks.shapes import SHAPES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["fsdp", "single"], required=True)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each (t5-xl has 24)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--step", type=int, default=2, help="optimizer step to break down (0-based global step)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fsdp-memory-work")
    parser.add_argument("--timeout", type=int, default=580)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIT_QSUM_CACHE": str(args.work / "cache"), "OMP_NUM_THREADS": "1" if args.mode == "fsdp" else "2",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])}
    os.environ["LIT_QSUM_CACHE"] = env["LIT_QSUM_CACHE"]
    shape = {**SHAPES["t5-xl"], "num_layers": args.layers, "num_decoder_layers": args.layers, "dtype": "bfloat16"}
    materialize(shape)
    data = args.work / "long.csv"
    if not data.exists():
        write_long_dialogues(data, rows=64)
    callbacks = args.work / f"callbacks-{args.mode}-{os.getpid()}.json"
    callbacks.write_text(json.dumps([{"class_path": "tracker.MemoryBreakdown",
                                      "init_args": {"out": str(args.out.resolve()), "step": args.step}}]))
    steps = args.step + 1
    cli = [
        "fit", "--config", str(REPO / "configs/fsdp-qlora.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed",
        "--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
        "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "null",
        "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(args.work / f"root-{args.mode}"),
        "--trainer.callbacks", str(callbacks),
        "--model.model_name_or_path", "null", "--model.tokenizer", "lit_qsum:demo",
        "--model.model_config", json.dumps(shape), "--model.gradient_checkpointing", "true",
        "--model.accumulate_grad_batches", "1",
        "--data.train_path", str(data), "--data.val_path", str(data), "--data.encoder_max_len", str(ENCODER_TOKENS),
        "--data.decoder_max_len", str(DECODER_TOKENS), "--data.pad_to_multiple_of", "8",
        "--data.max_eval_samples", "8", "--data.num_workers", "0", "--data.batch_size", str(args.batch),
    ]
    cli += ["--trainer.devices", "2"] if args.mode == "fsdp" else ["--trainer.devices", "1", "--trainer.strategy", "auto"]
    cli += args.extra
    t0 = time.time()
    done = subprocess.run([sys.executable, str(HERE / "cli_entry.py"), *cli], cwd=args.work, env=env,
                          timeout=args.timeout, capture_output=True, text=True)
    print(f"exit {done.returncode} after {time.time() - t0:.0f} s")
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-6000:])
        sys.exit(1)
    print("\n".join(line for line in (done.stdout + done.stderr).splitlines() if "fast path" in line or "FSDP" in line
                    or "model:" in line)[-3000:])


if __name__ == "__main__":
    main()
