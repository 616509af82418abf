"""torch's fused Adam/AdamW kernel for the adapter's optimizer step.

The default (foreach) Adam launches a few dozen kernels per step over the ~900 adapter tensors of a
t5-large LoRA and keeps each tensor's step count on the CPU; the fused kernel updates every tensor in
one launch and counts steps on the GPU, which a captured or host-bound step needs. Same update rule;
results differ from foreach by rounding order only.
"""

from __future__ import annotations

import torch

_ADAMS = (torch.optim.Adam, torch.optim.AdamW)


def prefer_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Switch an Adam/AdamW whose ``foreach`` and ``fused`` were left unset to the fused kernel; True if it is fused now.

    Safe to call again after ``load_state_dict`` (a resumed run restores the saved groups' flags): step
    counts saved on the CPU by a foreach run are moved to the parameters' device, as the fused kernel needs.
    """
    if type(optimizer) not in _ADAMS:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
        return False
    groups = optimizer.param_groups
    if any(g.get("fused") is False or g.get("foreach") is not None or g.get("differentiable") or g.get("capturable")
           for g in groups):
        return False  # the user chose an implementation (or a variant the fused kernel lacks)
    for group in groups:
        group["fused"] = True
        group["foreach"] = None
    # Adam.__init__ also sets ``_step_supports_amp_scaling`` for fused=True so that a GradScaler lets the kernel
    # unscale; left unset, a 16-mixed scaler unscales first as for any optimizer, and Lightning still clips
    # (it refuses to clip for optimizers that unscale internally)
    optimizer.defaults["fused"] = True
    for param in params:
        step = optimizer.state.get(param, {}).get("step")
        if isinstance(step, torch.Tensor) and step.device != param.device:
            optimizer.state[param]["step"] = step.to(device=param.device, dtype=torch.float32)
    return True
