"""WarmupDecayLR: the built-in schedule, re-sizable, and resumable from checkpoints of the LambdaLR it replaced."""

from __future__ import annotations

import io
import math

import pytest
import torch

from lit_qsum.lr_schedule import WarmupDecayLR


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lambda_lr(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The closure schedule checkpoints from before WarmupDecayLR carry (linear decay)."""
    def factor(step: int) -> float:
        warmup = int(warmup_ratio * total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(1.0 - min((step - warmup) / max(total - warmup, 1), 1.0), 0.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
def test_warmup_then_decay(decay: str) -> None:
    scheduler = WarmupDecayLR(_optimizer(), total_steps=10, warmup_ratio=0.2, decay=decay)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        _step(scheduler)
    assert lrs[:2] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    end = {"linear": 1 - 7 / 8, "cosine": 0.5 * (1 + math.cos(math.pi * 7 / 8)), "constant": 1.0}[decay]
    assert lrs[-1] == pytest.approx(end)


def test_resizing_sets_the_lr_in_force() -> None:
    optimizer = _optimizer()
    scheduler = WarmupDecayLR(optimizer, total_steps=4)
    _step(scheduler)
    _step(scheduler)
    scheduler.set_total_steps(8)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 - 2 / 8)
    _step(scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 - 3 / 8)


def test_state_dict_round_trips() -> None:
    scheduler = WarmupDecayLR(_optimizer(), total_steps=12, warmup_ratio=0.25)
    for _ in range(5):
        _step(scheduler)
    state = scheduler.state_dict()
    resumed = WarmupDecayLR(_optimizer(), total_steps=3, warmup_ratio=0.25)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state and resumed.total_steps == 12
    _step(scheduler)
    _step(resumed)
    assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_resumes_from_a_lambda_lr_checkpoint() -> None:
    old = _lambda_lr(_optimizer(), total=10, warmup_ratio=0.2)
    for _ in range(4):
        _step(old)
    state = torch.load(_saved(old.state_dict()), weights_only=True)
    optimizer = _optimizer()
    resumed = WarmupDecayLR(optimizer, total_steps=10, warmup_ratio=0.2)
    resumed.load_state_dict(state)
    resumed.set_total_steps(10)  # what the module does at train start
    assert optimizer.param_groups[0]["lr"] == pytest.approx(old.get_last_lr()[0])
    _step(old)
    _step(resumed)
    assert resumed.get_last_lr() == pytest.approx(old.get_last_lr())
    assert "lr_lambdas" not in resumed.state_dict()


def _step(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    scheduler.optimizer.step()  # in torch's order, so it does not warn
    scheduler.step()


def _saved(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
