import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from lit_qsum.callbacks import CudaMemoryMonitor

GIB = 1024**3


class FakeCuda:
    """Allocator numbers driven by the trainer: allocated grows 0.1 GiB a step up to step 7, validation peaks higher."""

    def __init__(self, total_gib: float = 10.0, val_peak_gib: float = 0.0) -> None:
        self.total = int(total_gib * GIB)
        self.val_peak = int(val_peak_gib * GIB)
        self.trainer: L.Trainer | None = None
        self.empty_cache_calls = 0

    def allocated(self) -> int:
        assert self.trainer is not None
        return int((1 + 0.1 * min(self.trainer.global_step, 7)) * GIB)

    def stats(self, monitor: CudaMemoryMonitor, device: torch.device) -> dict[str, int]:
        assert self.trainer is not None
        peak = self.allocated() + GIB // 2
        if self.trainer.validating and not self.trainer.sanity_checking:
            peak = max(peak, self.val_peak)
        return {"allocated": self.allocated(), "reserved": 2 * GIB, "peak_allocated": peak, "peak_reserved": 3 * GIB}

    def free(self, monitor: CudaMemoryMonitor, device: torch.device) -> tuple[int, int]:
        return self.total - 3 * GIB, self.total


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()

    def uses_cuda(trainer: L.Trainer) -> bool:
        fake.trainer = trainer
        return True

    def empty_cache() -> None:
        # Lightning itself calls empty_cache() on resume and teardown; count only the callback's calls
        if sys._getframe(1).f_globals["__name__"] == CudaMemoryMonitor.__module__:
            fake.empty_cache_calls += 1

    monkeypatch.setattr(sys.modules[CudaMemoryMonitor.__module__], "uses_cuda", uses_cuda)
    monkeypatch.setattr(CudaMemoryMonitor, "_read_cuda_stats", lambda self, device: fake.stats(self, device))  # noqa: PLW0108
    monkeypatch.setattr(CudaMemoryMonitor, "_read_cuda_free", lambda self, device: fake.free(self, device))  # noqa: PLW0108
    monkeypatch.setattr(CudaMemoryMonitor, "_read_host_rss", lambda self: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    return fake


def test_logs_mem_keys_every_n_steps(fake_cuda, make_trainer, make_model, read_logged):
    trainer = make_trainer([CudaMemoryMonitor(every_n_steps=4)], max_steps=12, limit_val_batches=0)
    trainer.fit(make_model())
    # CSV steps are Lightning's logging steps: global_step - 1 inside on_train_batch_end
    assert read_logged(trainer, "mem/allocated_gib") == pytest.approx({3: 1.4, 7: 1.7, 11: 1.7})
    assert read_logged(trainer, "mem/reserved_gib") == pytest.approx({3: 2.0, 7: 2.0, 11: 2.0})
    assert read_logged(trainer, "mem/peak_allocated_gib") == pytest.approx({3: 1.9, 7: 2.2, 11: 2.2})
    assert read_logged(trainer, "mem/peak_allocated_gib_max_rank") == pytest.approx({3: 1.9, 7: 2.2, 11: 2.2})
    assert read_logged(trainer, "mem/free_gib") == pytest.approx({3: 7.0, 7: 7.0, 11: 7.0})
    assert read_logged(trainer, "mem/host_rss_gib") == pytest.approx({3: 3.0, 7: 3.0, 11: 3.0})


def test_tracks_peak_step_and_validation_peak(fake_cuda, make_trainer, make_model, lightning_caplog):
    callback = CudaMemoryMonitor(every_n_steps=50)
    trainer = make_trainer([callback], max_steps=12, limit_val_batches=0)
    trainer.fit(make_model())
    assert callback.peak_allocated_bytes == int(1.7 * GIB) + GIB // 2
    assert (callback.peak_step, callback.peak_in_validation) == (7, False)
    assert callback.peak_reserved_bytes == 3 * GIB

    fake_cuda.val_peak = 5 * GIB  # generation during validation after step 10 sets a new peak
    callback = CudaMemoryMonitor(every_n_steps=50)
    trainer = make_trainer([callback], max_steps=12, limit_train_batches=10)
    trainer.fit(make_model())
    assert (callback.peak_allocated_bytes, callback.peak_step, callback.peak_in_validation) == (5 * GIB, 10, True)
    assert "peak allocated  5.00 GiB at step 10 (validation)" in lightning_caplog.text


def test_threshold_cleanup_of_total(fake_cuda, make_trainer, make_model):
    # allocated 1.4 / 10 GiB at step 4, 1.7 / 10 at steps 8 and 12
    callback = CudaMemoryMonitor(every_n_steps=4, cleanup_threshold=0.15, threshold_of="total")
    make_trainer([callback], max_steps=12, limit_val_batches=0).fit(make_model())
    assert callback.cleanups == fake_cuda.empty_cache_calls == 2


def test_threshold_cleanup_of_reserved(fake_cuda, make_trainer, make_model):
    # allocated 1.4 / 2 GiB reserved at step 4 (0.7), 1.7 / 2 at steps 8 and 12 (0.85)
    callback = CudaMemoryMonitor(every_n_steps=4, cleanup_threshold=0.8, threshold_of="reserved")
    make_trainer([callback], max_steps=12, limit_val_batches=0).fit(make_model())
    assert callback.cleanups == fake_cuda.empty_cache_calls == 2
    callback = CudaMemoryMonitor(every_n_steps=4, cleanup_threshold=0.9, threshold_of="reserved")
    make_trainer([callback], max_steps=12, limit_val_batches=0).fit(make_model())
    assert callback.cleanups == 0


def test_state_survives_resume(fake_cuda, make_trainer, make_model, tmp_path: Path):
    callback = CudaMemoryMonitor(every_n_steps=2, cleanup_threshold=0.1)
    trainer = make_trainer([callback], max_steps=6, limit_val_batches=0)
    trainer.fit(make_model())
    assert (callback.peak_step, callback.cleanups) == (6, 3)
    ckpt = tmp_path / "step6.ckpt"
    trainer.save_checkpoint(ckpt)

    # after the resume this process's allocator peaks lower; the restored peak and step stand
    fake_cuda.allocated = lambda: GIB // 2
    resumed = CudaMemoryMonitor(every_n_steps=2, cleanup_threshold=0.01)
    trainer = make_trainer([resumed], max_steps=10, limit_val_batches=0)
    trainer.fit(make_model(), ckpt_path=ckpt)
    assert resumed.peak_allocated_bytes == callback.peak_allocated_bytes
    assert resumed.peak_step == 6
    assert resumed.cleanups == 3 + 2  # steps 8 and 10


def test_summary_reports_oom_recoveries_from_any_callback(fake_cuda, make_trainer, make_model, lightning_caplog):
    class OOMBatchSizeScaler(L.Callback):
        recoveries = 3

    trainer = make_trainer([CudaMemoryMonitor(every_n_steps=5), OOMBatchSizeScaler()], max_steps=5, limit_val_batches=0)
    trainer.fit(make_model())
    summary = next(r.getMessage() for r in lightning_caplog.records if "CudaMemoryMonitor summary" in r.getMessage())
    assert summary.splitlines()[1:] == [
        "  peak allocated  2.00 GiB at step 5",
        "  peak reserved   3.00 GiB",
        "  cache cleanups  0",
        "  peak host RSS   3.00 GiB (sampled every 5 steps and at the end)",
        "  OOM recoveries  3",
    ]


def test_summary_reads_module_oom_recoveries(fake_cuda, make_trainer, make_model, lightning_caplog):
    model = make_model()
    model.oom_recoveries = 2
    make_trainer([CudaMemoryMonitor(every_n_steps=5)], max_steps=5, limit_val_batches=0).fit(model)
    assert "OOM recoveries  2" in lightning_caplog.text


def test_cpu_logs_host_rss_only(make_trainer, make_model, read_logged, read_logged_keys, lightning_caplog):
    callback = CudaMemoryMonitor(every_n_steps=2)
    trainer = make_trainer([callback], max_steps=4, limit_val_batches=0)
    trainer.fit(make_model())
    assert {k for k in read_logged_keys(trainer) if k.startswith("mem/")} == {"mem/host_rss_gib"}
    rss = read_logged(trainer, "mem/host_rss_gib")
    assert sorted(rss) == [1, 3] and all(0.01 < v < 1024 for v in rss.values())
    assert "not CUDA; logging host RSS only" in lightning_caplog.text
    assert "peak allocated" not in lightning_caplog.text and "peak host RSS" in lightning_caplog.text


def test_cpu_without_host_rss_logs_nothing(make_trainer, make_model, read_logged_keys):
    trainer = make_trainer([CudaMemoryMonitor(every_n_steps=1, log_host_rss=False)], max_steps=3, limit_val_batches=0)
    trainer.fit(make_model())
    assert not any(k.startswith("mem/") for k in read_logged_keys(trainer))


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"cleanup_threshold": 0.0}, "cleanup_threshold"),
        ({"cleanup_threshold": 1.0}, "cleanup_threshold"),
        ({"threshold_of": "free"}, "threshold_of"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, arg: str):
    with pytest.raises(ValueError, match=arg):
        CudaMemoryMonitor(**kwargs)
