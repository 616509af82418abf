import gc
import sys

import pytest
import torch

from lit_qsum.callbacks import EmptyCudaCache


@pytest.fixture
def cache_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the global_step of every empty_cache() the callback makes."""
    steps: list[int] = []
    trainers: list = []
    original_setup = EmptyCudaCache.setup

    def setup(self: EmptyCudaCache, trainer, pl_module, stage: str) -> None:
        trainers.append(trainer)
        original_setup(self, trainer, pl_module, stage)

    def empty_cache() -> None:
        # Lightning itself calls empty_cache() on resume and teardown; count only the callback's calls
        if sys._getframe(1).f_globals["__name__"] in (EmptyCudaCache.__module__, "lightning.pytorch.utilities.memory"):
            steps.append(trainers[-1].global_step)

    monkeypatch.setattr(EmptyCudaCache, "setup", setup)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    return steps


@pytest.fixture
def fake_cuda(cache_spy: list[int], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pretend the root device is CUDA."""
    monkeypatch.setattr(sys.modules[EmptyCudaCache.__module__], "uses_cuda", lambda trainer: True)
    return cache_spy


def test_releases_every_n_steps_and_after_each_validation(fake_cuda, make_trainer, make_model):
    callback = EmptyCudaCache(every_n_steps=3)
    # 5 batches per epoch, validation at each epoch end (after steps 5 and 10) and the sanity check at step 0
    trainer = make_trainer([callback], max_steps=10, limit_train_batches=5)
    trainer.fit(make_model())
    assert fake_cuda == [0, 3, 5, 6, 9, 10]
    assert callback.calls == 6


def test_once_per_optimizer_step_under_gradient_accumulation(fake_cuda, make_trainer, make_model):
    callback = EmptyCudaCache(every_n_steps=2)
    trainer = make_trainer([callback], max_steps=4, limit_val_batches=0, accumulate_grad_batches=3)
    trainer.fit(make_model())
    assert fake_cuda == [2, 4]


def test_zero_steps_releases_only_after_validation(fake_cuda, make_trainer, make_model):
    callback = EmptyCudaCache(every_n_steps=0)
    trainer = make_trainer([callback], max_steps=10, limit_train_batches=5, num_sanity_val_steps=0)
    trainer.fit(make_model())
    assert fake_cuda == [5, 10]


def test_gc_collect_runs_first(fake_cuda, make_trainer, make_model, monkeypatch: pytest.MonkeyPatch):
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collected.append(len(fake_cuda)) or 0)
    trainer = make_trainer([EmptyCudaCache(every_n_steps=5, gc_collect=True)], max_steps=10, limit_val_batches=0)
    trainer.fit(make_model())
    assert fake_cuda == [5, 10]
    assert collected == [0, 1]  # each collect happened before its empty_cache


def test_inert_on_cpu_and_says_so_once(cache_spy, make_trainer, make_model, lightning_caplog):
    callback = EmptyCudaCache(every_n_steps=1)
    trainer = make_trainer([callback], max_steps=4, limit_train_batches=2)
    model = make_model()
    trainer.fit(model)
    trainer.validate(model, verbose=False)
    assert callback.calls == 0
    assert cache_spy == []
    assert sum("EmptyCudaCache: root device is cpu" in m for m in lightning_caplog.messages) == 1


def test_rejects_negative_every_n_steps():
    with pytest.raises(ValueError, match="every_n_steps"):
        EmptyCudaCache(every_n_steps=-1)
