"""How much of a padded batch is real tokens under lit-qsum's length grouping, on the CPU (no model involved).

  python benchmarks/grouping.py --out benchmarks/results

The samples are ``benchmarks/speed.py``'s synthetic seq2seq lengths (dialogues lognormal around 270 tokens, cap 512;
summaries around 49, cap 200; drawn independently), cut into batches by ``LengthGroupedBatchSampler`` and padded by
``Seq2SeqCollator`` as the data module does. One epoch is ``--batches`` batches: the grouping sorts within megabatches of
50 batches, so an epoch of a handful of batches (the GPU harness's short runs) groups less than users' epochs do.
Reported per micro-batch and setting: the non-pad share (real source + summary tokens / padded positions) and the number
of distinct batch shapes (each one CUDA-graph capture). Writes ``<date>-grouping.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import LENGTHS, synthetic_samples  # noqa: E402

from lit_qsum.data.collate import Seq2SeqCollator  # noqa: E402
from lit_qsum.data.features import feature_parts  # noqa: E402
from lit_qsum.data.length_grouped_sampler import LengthGroupedBatchSampler  # noqa: E402

SETTINGS = {  # name: (group_by_target, pad_to_multiple_of, target_pad_to_multiple_of)
    "by total length, pad 64": (False, 64, None),
    "group_by_target, pad 64": (True, 64, None),
    "group_by_target, pad 64, summaries 16": (True, 64, 16),
    "by total length, pad 8": (False, 8, None),
    "group_by_target, pad 8": (True, 8, None),
}


def measure(micro_batch: int, batches: int, seed: int) -> list[dict]:
    samples = synthetic_samples(micro_batch * batches, 32000, 1, LENGTHS, seed)
    features = [{**s, "index": i} for i, s in enumerate(samples)]
    parts = [feature_parts(f) for f in features]
    rows = []
    for name, (grouped, multiple, target_multiple) in SETTINGS.items():
        sampler = LengthGroupedBatchSampler(parts, micro_batch, seed=seed, bucket=multiple if grouped else None)
        collate = Seq2SeqCollator(0, multiple, target_multiple)
        real = padded = 0
        shapes = set()
        for batch in sampler:
            out = collate([features[i] for i in batch])
            real += int(out["attention_mask"].sum()) + int((out["labels"] != -100).sum())
            padded += out["input_ids"].numel() + out["labels"].numel()
            shapes.add((tuple(out["input_ids"].shape), tuple(out["labels"].shape)))
        rows.append({"micro_batch": micro_batch, "batches": batches, "setting": name, "non_pad_share": real / padded,
                     "shapes": len(shapes)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 30, 400], help="epoch lengths, in batches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [row for micro_batch in (16, 64) for batches in args.batches for row in measure(micro_batch, batches, args.seed)]
    date = datetime.date.today().isoformat()
    command = "python benchmarks/grouping.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{date}-grouping.json").write_text(json.dumps({"date": date, "command": command, "machine": "CPU",
                                                                 "rows": rows}, indent=1))
    lines = [f"# grouping: non-pad share of padded batches ({date}, CPU, no model)", "", f"- command: `{command}`",
             "- lengths: benchmarks/speed.py's synthetic seq2seq lengths; batches cut by LengthGroupedBatchSampler and "
             "padded by Seq2SeqCollator", "", "| micro-batch | epoch (batches) | setting | non-pad share | shapes |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['micro_batch']} | {r['batches']} | {r['setting']} | {r['non_pad_share']:.3f} | {r['shapes']} |"
              for r in rows]
    (args.out / f"{date}-grouping.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
