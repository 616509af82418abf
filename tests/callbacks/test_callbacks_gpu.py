"""The three callbacks on a real CUDA device: the torch.cuda reads the CPU tests replace, run for real."""

import pytest
import torch

from lit_qsum.callbacks import CudaMemoryMonitor, EmptyCudaCache, SummarizationThroughput

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SPIKE_BYTES = 256 * 2**20


@pytest.fixture
def spiky_model(make_model):
    class SpikyModel(make_model):
        """Allocates 256 MiB for a moment during optimizer step 7, so the allocator's peak belongs to that step."""

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
            if self.trainer.global_step == 6:
                torch.empty(SPIKE_BYTES, dtype=torch.uint8, device=self.device)
            return super().training_step(batch, batch_idx)

    return SpikyModel()


def test_callbacks_on_cuda(spiky_model, make_trainer, read_logged):
    torch.cuda.reset_peak_memory_stats()
    monitor = CudaMemoryMonitor(every_n_steps=5, cleanup_threshold=1e-9, threshold_of="reserved")
    cache = EmptyCudaCache(every_n_steps=5)
    throughput = SummarizationThroughput(window=5)
    trainer = make_trainer([monitor, cache, throughput], accelerator="cuda", max_steps=10, limit_train_batches=10)
    trainer.fit(spiky_model)

    assert (monitor.peak_step, monitor.peak_in_validation) == (7, False)
    assert monitor.peak_allocated_bytes >= SPIKE_BYTES
    peak = read_logged(trainer, "mem/peak_allocated_gib")
    assert peak[4] < SPIKE_BYTES / 2**30 <= peak[9]
    assert read_logged(trainer, "mem/peak_allocated_gib_max_rank") == peak
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    for key in ("mem/allocated_gib", "mem/reserved_gib", "mem/free_gib"):
        values = read_logged(trainer, key)
        assert sorted(values) == [4, 9] and all(0 < v < total_gib for v in values.values()), key
    assert monitor.cleanups == 2  # allocated/reserved > 1e-9 at both measurements

    assert cache.calls == 4  # sanity check, steps 5 and 10, validation after step 10

    assert throughput.total_tokens == spiky_model.seen_tokens
    tokens_per_s = read_logged(trainer, "perf/tokens_per_s")
    assert sorted(tokens_per_s) == [4, 9] and all(v > 0 for v in tokens_per_s.values())
