"""Run ``lit-qsum`` with PyTorch's CUDA memory capped, as if on a smaller card (real OOMs, real recovery).

  python benchmarks/capped_fit.py --cap-gib 7 -- fit --config configs/h100.yaml --config benchmarks/configs/t5-large.yaml ...

After the command it prints torch.cuda's own peak figures, to compare with CudaMemoryMonitor's summary.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from lit_qsum.cli import main as lit_qsum_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap-gib", type=float, required=True, help="usable GPU memory, in GiB")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the lit-qsum arguments")
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(args.cap_gib * 2**30 / total)
    try:
        lit_qsum_main(rest)
    finally:
        stats = {
            "cap_gib": args.cap_gib,
            "torch_max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "torch_max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
            "torch_num_ooms": torch.cuda.memory_stats().get("num_ooms", 0),
        }
        print("TORCH_CUDA_STATS " + json.dumps(stats), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
