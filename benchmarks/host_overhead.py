"""Host time lit-qsum's training loop adds per optimizer step, on the CPU: a tiny model's step under
``lit-qsum``'s Lightning loop (step engine, logging, progress bar) against a plain PyTorch loop over the same model,
loader and optimizer settings. With a model this small the step is mostly host time, so the difference is the loop's.

  python benchmarks/host_overhead.py            # prints both per-step times (mean of steps 21-80)
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_qsum

from lit_qsum.data.datamodule import SummarizationDataModule  # noqa: E402
from lit_qsum.module import SummarizationModule  # noqa: E402
from lit_qsum.settings import LoraSettings  # noqa: E402

TINY = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
        "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}
STEPS, SKIP = 80, 20


class StepTimes(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def mean_step(times: list[float]) -> float:
    gaps = [b - a for a, b in zip(times[SKIP:], times[SKIP + 1:])]
    return sum(gaps) / len(gaps)


def main() -> None:
    torch.set_num_threads(1)
    module = SummarizationModule(model_config=TINY, tokenizer="lit_qsum:demo", backend="lora", init_seed=3,
                                 lora=LoraSettings(rank=4, alpha=8, dropout=0.05))
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_eval_samples=4)
    timer = StepTimes()
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, callbacks=[timer], default_root_dir="/tmp/lit-qsum-host-overhead")
    trainer.fit(module, data)
    model = module.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for batch in itertools.islice(itertools.cycle(list(data.train_dataloader())), STEPS):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter())
    lit, plain = mean_step(timer.times), mean_step(times)
    print(f"lit-qsum step {lit * 1e3:.1f} ms, plain loop step {plain * 1e3:.1f} ms, "
          f"difference {(lit - plain) * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
