"""LongestBatchSizeFinder on the real (tiny) summarizer, against a fake memory budget in padded tokens (FakeMemory)."""

import dataclasses
import math
from collections import Counter
from copy import deepcopy
from typing import Any

import pytest
import torch

from conftest import FakeMemory, padded_tokens
from lit_qsum.callbacks import LongestBatchSizeFinder, OOMBatchSizeScaler
from lit_qsum.data.length_grouped_sampler import LongestBatchSampler
from lit_qsum.errors import UserInputError

pytestmark = pytest.mark.slow  # real fits through the Trainer, ~25-50 s per file on 2 CPU cores

N = 64  # training samples
BUDGET = 3000  # padded input + label tokens a training batch may hold


def _largest_longest_batch_that_fits(data: Any) -> int:
    """Brute force: the largest size whose probe batch (the longest samples, with the longest dialogue and the longest
    summary among them) costs at most BUDGET (cost grows with size)."""
    split = data._split("train")
    collate = data.train_dataloader().collate_fn
    return max(s for s in range(1, N + 1)
               if padded_tokens(collate([split.features[i] for i in _probe(data, s)])) <= BUDGET)


def _probe(data: Any, size: int) -> list[int]:
    return next(iter(LongestBatchSampler(data._split("train").parts, size)))


def _training_state(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """What training changes, copied."""
    return {
        "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad},
        "optimizer": deepcopy(trainer.optimizers[0].state_dict()),
        "scheduler": deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
        "loop": deepcopy(trainer.fit_loop.state_dict()),
        "counters": dataclasses.astuple(pl_module.engine.micro_batch),
        # a fused step's NaN/Inf count and loss, read back a step later, and the loss the progress bar shows
        "nothing to read back": pl_module.engine.pending is None,
        "loss shown": pl_module.engine.last_loss,
        # the epoch position; the batch size is what the finder changes
        "data": {k: v for k, v in trainer.datamodule.state_dict()["train_sampler"].items() if k != "batch_size"},
        "rng": torch.get_rng_state(),
    }


class _ObservedFinder(LongestBatchSizeFinder):
    """Captures the training state just before and after the search (Lightning runs tuner callbacks before all others,
    so a separate callback could not see the state before it)."""

    def __init__(self, before_search: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.before_search = before_search
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}

    def scale_batch_size(self, trainer, pl_module) -> None:
        if self.before_search is not None:
            self.before_search(trainer, pl_module)
        self.before = _training_state(trainer, pl_module)
        super().scale_batch_size(trainer, pl_module)
        self.after = _training_state(trainer, pl_module)


def _warm_optimizer(trainer: Any, pl_module: Any) -> None:
    """Some Adam state before the search, so restoring the optimizer is more than restoring nothing."""
    for p in pl_module.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    trainer.optimizers[0].step()
    trainer.optimizers[0].zero_grad(set_to_none=True)


def _assert_same(before: Any, after: Any, where: str = "") -> None:
    if isinstance(before, torch.Tensor):
        assert torch.equal(before, after), where
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            _assert_same(before[key], after[key], f"{where}/{key}")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after)):
            _assert_same(b, a, f"{where}/{i}")
    else:
        assert before == after, where


@pytest.mark.parametrize(("mode", "fused"), [("binsearch", False), ("power", False), ("binsearch", True)])
def test_finds_the_size_of_the_longest_batch_keeps_a_margin_and_restores_state(
    mode, fused, make_summarizer, make_summary_data, summary_trainer
):
    """``fused``: AdamW's fused kernel, as on a GPU, whose steps leave their NaN/Inf count to be read a step later."""
    optimizer = {"optimizer": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True)} if fused else {}
    module = make_summarizer(**optimizer)
    data = make_summary_data(batch_size=4, max_train_samples=N, encoder_max_len=128, decoder_max_len=32)
    memory = FakeMemory(module, train_budget=BUDGET, per_token=True)
    probed: list[list[int]] = []  # every trial forward's samples, those that ran out of memory included
    trained: list[list[int]] = []  # every forward of the fit proper
    fake_loss = module._loss

    def recording_loss(batch: dict[str, Any]) -> torch.Tensor:
        (probed if data.probe_longest else trained).append(batch["index"].tolist())
        return fake_loss(batch)

    module._loss = recording_loss
    finder = _ObservedFinder(_warm_optimizer, mode=mode, steps_per_trial=2, margin=0.1)
    scaler = OOMBatchSizeScaler()
    trainer = summary_trainer([scaler, finder])
    trainer.fit(module, data)

    expected = _largest_longest_batch_that_fits(data)
    if mode == "power":
        expected = 2 ** int(math.log2(expected))
    assert finder.found_batch_size == expected
    final = max(1, math.floor(expected * 0.9))
    assert finder.optimal_batch_size == data.batch_size == final
    # every trial batch was the probe batch for its size, never a random batch; sizes past the budget failed
    assert all(sorted(batch) == sorted(_probe(data, len(batch))) for batch in probed)
    assert {2, 4, expected} <= {len(batch) for batch in probed}
    assert memory.ooms and min(memory.ooms) > expected
    # what the trials changed is back: weights, optimizer, scheduler, counters, data position, loops, RNG
    assert finder.before["optimizer"]["state"]  # there was Adam state to restore
    _assert_same(finder.before, finder.after)
    # the fit that follows runs at the size set, over every sample once, with no OOM
    assert Counter(i for idx in trained for i in idx) == Counter(range(N))
    assert {len(idx) for idx in trained[:-1]} == {final}
    assert trainer.global_step == math.ceil(N / final) and scaler.recoveries == 0
    # the LR schedule spans the run at the size found (it was sized for batches of 4 before the finder ran)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == trainer.global_step
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0


def test_no_size_fits_says_what_to_change(make_summarizer, make_summary_data, summary_trainer):
    module = make_summarizer()
    FakeMemory(module, train_budget=10, per_token=True)
    finder = LongestBatchSizeFinder(steps_per_trial=1)
    with pytest.raises(UserInputError, match="encoder_max_len"):
        summary_trainer([finder]).fit(module, make_summary_data(batch_size=4))


def test_finder_replaces_oom_scaled_sizes(make_summarizer, make_summary_data, summary_trainer):
    """A size measured to fit whole makes micro-batch splitting unnecessary: the configured accumulation is back."""
    module = make_summarizer(accumulate_grad_batches=2)

    def scaled_by_an_earlier_oom(trainer: Any, pl_module: Any) -> None:  # what a resumed checkpoint may bring
        state = pl_module.engine.micro_batch
        state.micro_batch_size, state.accumulate_grad_batches = 1, 8

    finder = _ObservedFinder(scaled_by_an_earlier_oom, steps_per_trial=1, max_trials=2, margin=0.0)
    summary_trainer([finder], max_steps=1).fit(module, make_summary_data(batch_size=4))
    state = module.engine.micro_batch
    assert (state.micro_batch_size, state.accumulate_grad_batches) == (None, 2)
    assert finder.found_batch_size == 4  # init 2 fits, 4 fits, no more trials


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [({"margin": 1.0}, "margin"), ({"margin": -0.1}, "margin"), ({"steps_per_trial": 0}, "steps_per_trial"),
     ({"init_val": 0}, "init_val"), ({"max_val": 1}, "max_val"), ({"mode": "linear"}, "mode")],
)
def test_rejects_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        LongestBatchSizeFinder(**kwargs)
