"""The training step on a GPU makes the host wait for the GPU at most once per optimizer step (the read-back of the
previous step's NaN/Inf count, if CUDA counts that event wait at all): no ``.item()`` for the progress bar, no
pageable batch copy, no synced agreement. Checked with torch's sync debug mode over steady-state steps."""

from __future__ import annotations

import traceback
import warnings

import lightning.pytorch as L
import pytest
import torch

from lit_qsum.callbacks.progress import SummarizationProgressBar
from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.module import SummarizationModule
from lit_qsum.settings import LoraSettings

TINY_T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
           "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1}


class SyncCounter(L.Callback):
    """Sync debug mode "warn" from the end of step ``start`` to the end of training; keeps each sync's Python stack
    (the frames inside lit_qsum, lightning, transformers and torch that called it) for the failure message."""

    def __init__(self, start: int) -> None:
        self.start, self.steps, self.syncs = start, 0, []
        self._catcher = None

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message).lower() and "prototype" not in str(message).lower():
            frames = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                      if "/pytest" not in f.filename and "/pluggy" not in f.filename][-12:]
            self.syncs.append(f"step +{self.steps}: " + " <- ".join(reversed(frames)))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.start and self._catcher is None:
            self._catcher = warnings.catch_warnings()
            self._catcher.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = self._record
            torch.cuda.set_sync_debug_mode("warn")
        elif self._catcher is not None:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_steady_state_step_waits_for_the_gpu_at_most_once(tmp_path) -> None:
    module = SummarizationModule(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="qlora", init_seed=3,
                                 lora=LoraSettings(rank=4, alpha=8, dropout=0.05), gradient_checkpointing=True)
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=64, max_eval_samples=4,
                                   pad_to_multiple_of=64)
    counter = SyncCounter(start=6)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=12, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[SummarizationProgressBar(plain=True, every_n_steps=1000), counter])
    trainer.fit(module, data)
    assert counter.steps >= 5
    # at most the read-back wait, once per step; the message names where each sync came from
    assert len(counter.syncs) <= counter.steps, "\n".join(counter.syncs)
