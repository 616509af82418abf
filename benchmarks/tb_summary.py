"""Print first/last/max of each scalar in TensorBoard event folders as JSON (for GPU run records).

  python benchmarks/tb_summary.py outputs/h100/tensorboard/version_0 [more dirs...]
"""

from __future__ import annotations

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def summarize(path: str) -> dict:
    acc = EventAccumulator(path)
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        values = [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)]
        out[tag] = {"first": values[0], "last": values[-1], "max": max(v for _, v in values), "n": len(values)}
    return out


if __name__ == "__main__":
    print(json.dumps({p: summarize(p) for p in sys.argv[1:]}, indent=1))
