"""GPU memory measurements behind the GPU profiles (issue: backends & profiles).

  python benchmarks/memory_profile.py modes        # peak memory of full vs LoRA vs QLoRA, t5-large shape
  python benchmarks/memory_profile.py batch-sizes  # largest micro-batch per card budget, t5-large & KoBART shapes

Models are built through lit-qsum's own loader (random init of the real shapes) and trained with the
same step the module runs (bf16 autocast, AdamW on trainable weights) on worst-case lengths:
encoder 512 / decoder 200 tokens. Card budgets are imposed with
``torch.cuda.set_per_process_memory_fraction``. Results go to benchmarks/results/<date>-<what>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES  # noqa: E402

from lit_qsum.backends.loader import ModelSpec, load_model  # noqa: E402
from lit_qsum.settings import LoraSettings  # noqa: E402

RESULTS = Path(os.environ.get("LIT_QSUM_RESULTS", Path(__file__).resolve().parent / "results"))
ENC, DEC = 512, 200
# usable memory of each consumer card as PyTorch sees it: nominal GiB minus ~0.8 GiB for the CUDA
# context, cuBLAS workspaces and a desktop session
BUDGETS_GIB = {"h100 (80 GB)": 78.0, "rtx3090 (24 GB)": 23.0, "rtx4080 (16 GB)": 15.0, "rtx4070 (12 GB)": 11.0,
               "rtx4060 (8 GB)": 7.0}


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def build(shape: str, backend: str, checkpointing: bool, rank: int = 16):
    spec = ModelSpec(model_config=SHAPES[shape], tokenizer="lit_qsum:demo", backend=backend,
                     lora=LoraSettings(rank=rank, alpha=2 * rank, dropout=0.05), gradient_checkpointing=checkpointing)
    loaded = load_model(spec, device=torch.device("cuda"))
    model = loaded.model.cuda().train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def train_steps(model, optimizer, batch: int, steps: int = 2) -> float:
    """Run ``steps`` optimizer steps at worst-case lengths; returns seconds per step."""
    ids = torch.randint(5, 3000, (batch, ENC), device="cuda")
    labels = torch.randint(5, 3000, (batch, DEC), device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def fits(model, optimizer, batch: int) -> bool:
    try:
        train_steps(model, optimizer, batch, steps=1)  # one step holds the peak: activations + optimizer states
        return True
    except torch.cuda.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        return False
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(model, optimizer, limit: int) -> int:
    """Largest batch <= limit that fits: halve down from ``limit`` to a fitting size, then bisect."""
    if fits(model, optimizer, limit):
        return limit
    hi, lo = limit, limit // 2
    while lo >= 1 and not fits(model, optimizer, lo):
        hi, lo = lo, lo // 2
    if lo < 1:
        return 0
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(model, optimizer, mid) else (lo, mid)
    return lo


def meta() -> dict:
    import bitsandbytes
    import peft
    import transformers

    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_total_gib": gib(torch.cuda.get_device_properties(0).total_memory),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__, "python": platform.python_version(),
        "command": "python " + " ".join(sys.argv),
    }


def run_modes(batch: int) -> tuple[list[dict], list[str]]:
    records, lines = [], ["| mode | peak allocated GiB | vs full | s/step |", "|---|---|---|---|"]
    for backend in ("full", "lora", "qlora"):
        model, optimizer = build("t5-large", backend, checkpointing=True)
        train_steps(model, optimizer, batch, steps=1)  # warm-up: allocator and optimizer state exist
        torch.cuda.reset_peak_memory_stats()
        seconds = train_steps(model, optimizer, batch, steps=3)
        peak = gib(torch.cuda.max_memory_allocated())
        records.append({"shape": "t5-large", "mode": backend, "batch": batch, "enc": ENC, "dec": DEC,
                        "gradient_checkpointing": True, "peak_allocated_gib": peak, "s_per_step": round(seconds, 3)})
        del model, optimizer
        gc.collect()
        torch.cuda.empty_cache()
        print(records[-1], flush=True)
    full = records[0]["peak_allocated_gib"]
    for r in records:
        r["fraction_of_full"] = round(r["peak_allocated_gib"] / full, 3)
        lines.append(f"| {r['mode']} | {r['peak_allocated_gib']} | {100 * r['fraction_of_full']:.0f}% | {r['s_per_step']} |")
    return records, lines


def run_batch_sizes(shapes: list[str]) -> tuple[list[dict], list[str]]:
    total = torch.cuda.get_device_properties(0).total_memory
    records = []
    lines = ["| shape | checkpointing | " + " | ".join(BUDGETS_GIB) + " |", "|---|---|" + "---|" * len(BUDGETS_GIB)]
    for shape in shapes:
        for checkpointing in (True, False):
            model, optimizer = build(shape, "qlora", checkpointing)
            row, limit = [], 128
            for card, budget in BUDGETS_GIB.items():  # budgets shrink, so each answer bounds the next search
                torch.cuda.set_per_process_memory_fraction(budget * 2**30 / total)
                best = largest_batch(model, optimizer, limit)
                limit = max(best, 1)
                records.append({"shape": shape, "backend": "qlora", "gradient_checkpointing": checkpointing,
                                "card": card, "budget_gib": budget, "max_micro_batch": best, "enc": ENC, "dec": DEC})
                print(records[-1], flush=True)
                row.append(f">={best}" if best == 128 else str(best))
            torch.cuda.set_per_process_memory_fraction(1.0)
            lines.append(f"| {shape} | {'on' if checkpointing else 'off'} | " + " | ".join(row) + " |")
            del model, optimizer
            gc.collect()
            torch.cuda.empty_cache()
    return records, lines


def write(what: str, info: dict, records: list[dict], lines: list[str], notes: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{info['date']}-{what}"
    stem.with_suffix(".json").write_text(json.dumps([{**r, "gpu": info["gpu"], "date": info["date"]} for r in records], indent=1))
    header = [f"# {what}", "", f"- card: {info['gpu']} ({info['gpu_total_gib']} GiB)", f"- date: {info['date']}",
              f"- versions: torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
              f"bitsandbytes {info['bitsandbytes']}", f"- command: `{info['command']}`", f"- {notes}", ""]
    stem.with_suffix(".md").write_text("\n".join(header + lines) + "\n")
    print("\n".join(header + lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["modes", "batch-sizes"])
    parser.add_argument("--batch", type=int, default=8, help="micro-batch for `modes`")
    parser.add_argument("--shapes", nargs="+", default=["t5-large", "kobart"], help="shapes for `batch-sizes`")
    args = parser.parse_args()
    info = meta()
    if args.what == "modes":
        records, lines = run_modes(args.batch)
        write("memory-full-lora-qlora", info, records, lines,
              f"t5-large shape, micro-batch {args.batch}, encoder {ENC} / decoder {DEC} tokens, bf16 autocast, "
              "gradient checkpointing, AdamW; LoRA r16 on all attention+FFN linears")
    else:
        records, lines = run_batch_sizes(args.shapes)
        write("profile-batch-sizes", info, records, lines,
              f"QLoRA (NF4, double quant, bf16 compute), r16, encoder {ENC} / decoder {DEC} tokens (worst case), "
              "largest micro-batch that runs 2 optimizer steps under each budget (set_per_process_memory_fraction)")


if __name__ == "__main__":
    main()
