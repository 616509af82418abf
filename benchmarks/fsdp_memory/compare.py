"""One line per MemoryBreakdown JSON (rank 0, with rank 1's peak beside it): train start, step peak, where, the
adapter's end-of-training hash (equal hashes: the same training), then the categories at the peak (MiB).
``python compare.py /tmp/fm/p*-fsdp-L4-B8.json``"""
import json
import sys
from pathlib import Path

for f in sys.argv[1:]:
    if "-rank" in f:
        continue
    d = json.loads(Path(f).read_text())
    r1 = Path(f.replace(".json", "-rank1.json"))
    peak1 = json.loads(r1.read_text())["peak_gib"] if r1.exists() else float("nan")
    print(f"{Path(f).name:28s} start {d['train_start_gib']:.4f}  peak {d['peak_gib']:.4f} (rank 1 {peak1:.4f})  "
          f"peak-start {d['peak_gib'] - d['train_start_gib']:.4f} GiB  at {d['peak_at']['phase']}/{d['peak_at']['module']}"
          f"  adapter {d.get('adapter_sha256_at_end', '?')[:12]} after step {d.get('global_step_at_end')}")
    print("    " + ", ".join(f"{k} {v * 1024:.1f}" for k, v in d["at_peak"].items() if v > 0.0005))
