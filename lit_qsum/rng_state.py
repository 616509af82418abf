"""Capture and restore every RNG that training draws from, so a resumed run draws the same dropout masks.

Lightning checkpoints don't carry RNG states; the module stores these in ``checkpoint["lit_qsum"]``, one per
rank (each rank's dropout draws a different number of values, so their generators part after the first step).
On CUDA only the generator of the device the rank trains on is kept and put back on the device it trains on
after the resume, whatever ``CUDA_VISIBLE_DEVICES`` numbers it then.

What else must hold for the same masks: nothing may draw from the global generators between the save and the
next training step in one run but not in the other. DataLoaders draw a base seed from the global torch
generator for every new iterator unless they have their own (``SummarizationDataModule`` gives them one).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture(device: torch.device | None = None) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's CPU generators, and the CUDA generator of ``device`` if on CUDA."""
    # plain types and tensors only: checkpoints must load with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    elif device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what ``capture`` saved; a CUDA state goes to ``device`` (states of checkpoints made before: to
    every visible GPU, where as many are visible)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"].cpu(), device)
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
