"""``python cli_entry.py <lit-qsum fit arguments>``: the real CLI, with one CPU-only patch, re-run by Lightning for rank 1.

Lightning's ``FSDPPrecision.forward_context`` hard-codes ``torch.autocast("cuda")`` for bf16-mixed; on the CPU that
autocast does nothing and FSDP would run without the autocast the one-process run has (``MixedPrecision`` plugin:
``torch.autocast("cpu")``). Patched here to autocast on the CPU, so both runs compute in the same dtypes.
Extra patches for prototypes are switched on by environment variables (see ``patches.py``).
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the checkout
sys.path.insert(0, str(HERE))

_orig = FSDPPrecision.forward_context


def _forward_context(self):
    if "mixed" in self.precision and not torch.cuda.is_available():
        return torch.autocast("cpu", dtype=torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16)
    return _orig(self)


FSDPPrecision.forward_context = _forward_context

import patches  # noqa: E402,F401 - prototypes, each off unless its environment variable is set

from lit_qsum.cli import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
