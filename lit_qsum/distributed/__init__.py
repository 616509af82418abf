"""Several GPUs through Lightning's own strategies: DDP gradient sync done per optimizer step, FSDP for (Q)LoRA."""

from __future__ import annotations

import torch.distributed as dist


def close_process_group(*, finished: bool) -> None:
    """Destroy the default process group while the interpreter is still whole.

    Lightning 2.6 registers ``destroy_process_group`` at exit for NCCL only. A gloo group (CPU runs, the 2-process
    tests) is then torn down during interpreter finalization, where its worker threads can abort the process
    ("terminate called without an active exception") after a run that finished well. ``finished``: every rank
    returned normally, so a barrier first keeps one rank from closing while another still talks to it; after an
    error there is no barrier (the other ranks may never reach it).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if finished:
            dist.barrier()
    finally:
        dist.destroy_process_group()
