"""``python run_cli.py <lit-qsum arguments>``: the real CLI, with test hooks set by environment variables.

``FAKE_OOM_RANK=r`` (and ``FAKE_OOM_STEP=s``, default 1): the first training forward of more than one sample on
rank ``r`` at optimizer step ``s`` or later raises ``torch.cuda.OutOfMemoryError``, and so does every later training
forward of at least that many samples there, as memory that can't hold them would: on a GPU the first one may be a
CUDA-graph capture, which gives the micro-batch back to the eager step, and that must run out of memory too.
``FAKE_GENERATE=1``: "summaries" are the first words of each dialogue (``fake_summary``), so ROUGE and predictions
are non-trivial and do not depend on how samples are batched or sharded. Patched
before Lightning forks the ranks (``ddp_fork``), so every rank runs the patched code. This folder is on
``sys.path``, so YAMLs can name ``recorder.Recorder``.
"""

import os
import sys

import torch

from lit_qsum.cli import main
from lit_qsum.module import SummarizationModule

if "FAKE_OOM_RANK" in os.environ:
    oom_rank, oom_step = int(os.environ["FAKE_OOM_RANK"]), int(os.environ.get("FAKE_OOM_STEP", "1"))
    real_loss, fired = SummarizationModule._loss, []

    def loss(self: SummarizationModule, batch: dict) -> torch.Tensor:
        size = len(batch["input_ids"])  # a graph capture gets the model inputs only, no "index"
        if (self.training and self.global_rank == oom_rank and self.global_step >= oom_step and size > 1
                and (not fired or size >= fired[0])):
            fired.append(size)
            raise torch.cuda.OutOfMemoryError(f"fake CUDA out of memory on rank {oom_rank}")
        return real_loss(self, batch)

    SummarizationModule._loss = loss



def fake_summary(dialogue: str) -> str:
    return " ".join(dialogue.split()[:12])


if os.environ.get("FAKE_GENERATE"):
    SummarizationModule.generate = lambda self, batch: [fake_summary(d) for d in batch["dialogue"]]

if __name__ == "__main__":
    main(sys.argv[1:])
