"""Print MemoryBreakdown JSONs side by side: ``python show.py a.json b.json ...`` (GiB; MiB for top sites)."""
import json
import sys

files = sys.argv[1:]
data = [json.load(open(f)) for f in files]
for f, d in zip(files, data):
    print(f"== {f}: rank {d['rank']} step {d['step']}  train start {d['train_start_gib']:.3f}  step start "
          f"{d['step_start_gib']:.3f}  peak {d['peak_gib']:.3f} GiB "
          f"(peak - train start {d['peak_gib'] - d['train_start_gib']:.3f})"
          f"  at {d['peak_at']}")
    print("   phase peaks:", {k: round(v, 3) for k, v in d["phase_peaks_gib"].items()})
    for k, v in d["at_peak"].items():
        start = d["train_start"].get(k, 0.0)
        print(f"   {k:40s} {v * 1024:9.1f} MiB   (train start {start * 1024:8.1f})")
    if "-v" in sys.argv[0] or len(files) == 1:
        for tag, mib in d["top_sites_at_peak_mib"]:
            print(f"      {mib:8.2f}  {tag}")
