"""Per-category memory at the step's peak, from runs with L and L' encoder+decoder layers, extrapolated linearly to
t5-xl's 24+24: ``python extrapolate.py <prefix> [L1 L2] [--target 24]`` reads ``<prefix>-{single,fsdp}-L<L>-B8.json``.
Categories are merged into a few groups; both modes' breakdowns are printed side by side (GiB)."""
import json
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
prefix = args[0]
l1, l2 = (int(args[1]), int(args[2])) if len(args) > 2 else (4, 6)
target = 24
modes = [m for m in ("single", "fsdp") if m in (sys.argv[-1] if "--modes" in sys.argv else "single,fsdp")]

GROUPS = [
    ("frozen base (4-bit, wo bf16, embedding)", lambda c: c.startswith("base ") or c == "quant state"),
    ("FSDP local shards (base)", lambda c: c.startswith("fsdp shard") or c.startswith("fsdp mp")),
    ("FSDP gathered: root unit (tied embedding/lm_head, final norms)", lambda c: c == "fsdp gathered (root unit)"),
    ("FSDP gathered: block units", lambda c: c == "fsdp gathered (block units)"),
    ("adapter params fp32", lambda c: c == "adapter param"),
    ("adapter bf16 copies", lambda c: c == "adapter bf16 copies"),
    ("adapter grads fp32", lambda c: c == "grad"),
    ("AdamW state", lambda c: c == "optimizer state"),
    ("fwd-saved: block boundaries etc.", lambda c: c == "fwd: saved in blocks"),
    ("fwd-saved: outside blocks (logits, loss...)", lambda c: c.startswith("fwd: saved outside")),
    ("recompute: dequantized weights", lambda c: c == "recompute: dequantized weights"),
    ("recompute: activations of the block", lambda c: c == "recompute: activations"),
    ("backward temporaries", lambda c: c.startswith("bwd")),
    ("other", lambda c: True),
]


def grouped(at: dict) -> dict:
    out = {name: 0.0 for name, _ in GROUPS}
    for cat, gib in at.items():
        for name, test in GROUPS:
            if test(cat):
                out[name] += gib
                break
    return out


def load(mode: str, layers: int) -> dict:
    return json.load(open(f"{prefix}-{mode}-L{layers}-B8.json"))


def extrap(a: float, b: float) -> float:
    return b + (b - a) / (l2 - l1) * (target - l2)


rows = {}
measured = {}
for mode in ("single", "fsdp"):
    try:
        d1, d2 = load(mode, l1), load(mode, l2)
    except FileNotFoundError:
        continue
    seg1, seg2 = f"bwd enc{l1 - 1}", f"bwd enc{l2 - 1}"  # the first encoder block's backward: the peak in every run
    g1 = grouped(d1["segments"][seg1]["at_peak"])
    g2 = grouped(d2["segments"][seg2]["at_peak"])
    measured[mode] = dict(g2, **{"= total at that point": d2["segments"][seg2]["peak_gib"],
                                 "train start": d2["train_start_gib"], "step peak (any segment)": d2["peak_gib"]})
    rows[mode] = {k: extrap(g1[k], g2[k]) for k in g1}
    rows[mode]["= total at that point"] = extrap(d1["segments"][seg1]["peak_gib"], d2["segments"][seg2]["peak_gib"])
    rows[mode]["train start"] = extrap(d1["train_start_gib"], d2["train_start_gib"])
    rows[mode]["step peak (any segment)"] = extrap(d1["peak_gib"], d2["peak_gib"])
    print(f"{mode}: L{l1} peak {d1['peak_gib']:.3f} at {d1['peak_at']['phase']} / L{l2} peak {d2['peak_gib']:.3f}")
names = list(next(iter(rows.values())).keys())
print(f"\n{'category (GiB; measured at L' + str(l2) + ', then extrapolated to 24+24 layers)':66s} "
      + " ".join(f"{m + '@' + str(l2):>9s}" for m in rows) + " " + " ".join(f"{m + '@24':>9s}" for m in rows))
for name in names:
    vals = [measured[m][name] for m in rows] + [rows[m][name] for m in rows]
    if any(abs(v) > 0.0005 for v in vals):
        print(f"{name:66s} " + " ".join(f"{v:9.3f}" for v in vals))
