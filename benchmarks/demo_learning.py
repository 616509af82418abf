"""Run the offline demo as a user would, time it, and record whether it learned.

  python benchmarks/demo_learning.py        # writes benchmarks/results/<date>-demo-learning[-N].{md,json}

Runs ``lit-qsum fit --config configs/demo.yaml`` in a fresh temp folder (so nothing is cached but the
random-init base), reads validation ROUGE from its TensorBoard log and reports the wall time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tb_summary import summarize

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("LIT_QSUM_RESULTS", REPO / "benchmarks" / "results"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lit-qsum-demo-"))
    cmd = ["lit-qsum", "fit", "--config", str(REPO / "configs" / "demo.yaml")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    events = next((work / "outputs" / "demo").rglob("events.out.tfevents.*")).parent
    scalars = summarize(str(events))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = ("val/rougeL", "val/rouge1", "val/rouge2", "val/loss")
    curve = {tag: [(e.step + 1, round(e.value, 4)) for e in acc.Scalars(tag)] for tag in tags}
    date = dt.date.today().isoformat()
    record = {
        "date": date, "wall_s": round(wall, 1), "cpu_cores": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "command": "lit-qsum fit --config configs/demo.yaml", "curves": curve,
        "train_loss_first_last": [scalars["train/loss"]["first"], scalars["train/loss"]["last"]],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = next(RESULTS / f"{date}-demo-learning{suffix}" for suffix in ["", *(f"-{i}" for i in range(2, 100))]
                if not (RESULTS / f"{date}-demo-learning{suffix}.json").exists())  # a rerun adds a file, never replaces
    record["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                      text=True).stdout.strip() or None
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    rows = ["| step | val/rouge1 | val/rouge2 | val/rougeL | val/loss |", "|---|---|---|---|---|"]
    for i, (step, rl) in enumerate(curve["val/rougeL"]):
        rows.append(f"| {step} | {curve['val/rouge1'][i][1]} | {curve['val/rouge2'][i][1]} | {rl} | {curve['val/loss'][i][1]} |")
    md = [
        "# Offline demo: does it learn, and how long does it take?", "",
        f"- date: {date}; commit: {record['commit']}; machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"no GPU, Python {platform.python_version()}",
        "- command: `lit-qsum fit --config configs/demo.yaml` (recorded by `python benchmarks/demo_learning.py`)",
        f"- wall time, process start to exit: **{wall:.0f} s**",
        "- data: bundled synthetic dialogues (2000 train, 100 held-out dev, Korean and English); tiny random-init T5 "
        "(d_model 128, 2+2 layers), LoRA r32, demo BPE tokenizer; greedy decoding, default ROUGE tokenizer", "",
        *rows, "",
    ]
    stem.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
