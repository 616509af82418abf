"""A resumed run draws the same random numbers (dropout masks) as the uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch

from lit_qsum import rng_state


def test_capture_restore_replays_every_generator() -> None:
    torch.manual_seed(1)
    saved = rng_state.capture()
    expected = (torch.rand(3), np.random.rand(2), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    rng_state.restore(saved)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_checkpoint_round_trip_through_torch_save(tmp_path) -> None:
    saved = rng_state.capture()
    torch.save({"rng": saved}, tmp_path / "x.ckpt")
    after = torch.rand(4)
    rng_state.restore(torch.load(tmp_path / "x.ckpt", weights_only=False)["rng"])
    assert torch.equal(torch.rand(4), after)


def test_state_loads_with_weights_only(tmp_path) -> None:
    torch.save({"rng": rng_state.capture()}, tmp_path / "y.ckpt")
    rng_state.restore(torch.load(tmp_path / "y.ckpt", weights_only=True)["rng"])


def test_new_loader_iterators_leave_the_global_rng_alone() -> None:
    """Issue #12.1: each new DataLoader iterator (every epoch, every validation) drew its workers' base seed from the
    global torch RNG; after a resume had restored it, that draw shifted every later dropout mask."""
    from lit_qsum.data.datamodule import SummarizationDataModule

    data = SummarizationDataModule(task="seq2seq", batch_size=2, max_train_samples=4, max_eval_samples=2)
    data.setup("fit")
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    for _ in range(2):
        next(iter(data.train_dataloader()))
        next(iter(data.val_dataloader()))
    assert torch.equal(torch.rand(2), expected)
