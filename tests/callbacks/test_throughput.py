import math
import sys
from pathlib import Path

import pytest
import torch

from lit_qsum.callbacks import SummarizationThroughput

BATCH_SIZE = 2  # conftest's dataloader batch size


def _window_tokens(steps: range, accumulate: int = 1) -> int:
    """Tokens conftest's dataset puts in the given optimizer steps (1-based, one epoch of 32 batches)."""
    tokens = 0
    for step in steps:
        for b in range((step - 1) * accumulate, step * accumulate):
            for i in range(b * BATCH_SIZE, (b + 1) * BATCH_SIZE):
                n = 3 + i % 6
                tokens += n + (n - 2)  # attention mask + labels past the 2 prompt tokens
    return tokens


@pytest.mark.parametrize("with_num_tokens", [True, False], ids=["num_tokens", "mask_and_labels"])
def test_logs_window_rates_and_counts_every_token(with_num_tokens, make_trainer, make_model, read_logged):
    callback = SummarizationThroughput(window=5)
    model = make_model(with_num_tokens=with_num_tokens)
    trainer = make_trainer([callback], max_steps=20, limit_val_batches=0)
    trainer.fit(model)

    tokens_per_s = read_logged(trainer, "perf/tokens_per_s")
    samples_per_s = read_logged(trainer, "perf/samples_per_s")
    step_time_s = read_logged(trainer, "perf/step_time_s")
    assert sorted(tokens_per_s) == sorted(samples_per_s) == sorted(step_time_s) == [4, 9, 14, 19]
    for end in (5, 10, 15, 20):
        tokens = _window_tokens(range(end - 4, end + 1))
        logged_step = end - 1
        # rates share the window's clock, so their ratios are exact whatever the machine's speed
        tokens_per_sample = tokens / (5 * BATCH_SIZE)
        assert tokens_per_s[logged_step] / samples_per_s[logged_step] == pytest.approx(tokens_per_sample, rel=1e-5)
        assert samples_per_s[logged_step] * step_time_s[logged_step] == pytest.approx(BATCH_SIZE, rel=1e-5)
        assert 0 < step_time_s[logged_step] < 5 and math.isfinite(tokens_per_s[logged_step])

    assert callback.total_tokens == model.seen_tokens == _window_tokens(range(1, 21))
    assert callback.total_samples == model.seen_samples == 20 * BATCH_SIZE
    assert 0 < callback.total_time < 60


def test_gradient_accumulation_counts_every_micro_batch(make_trainer, make_model, read_logged):
    callback = SummarizationThroughput(window=2)
    model = make_model()
    trainer = make_trainer([callback], max_steps=4, limit_val_batches=0, accumulate_grad_batches=3)
    trainer.fit(model)
    samples_per_s, step_time_s = read_logged(trainer, "perf/samples_per_s"), read_logged(trainer, "perf/step_time_s")
    assert sorted(samples_per_s) == [1, 3]
    # step_time_s is per optimizer step: 3 micro-batches of 2 samples each
    assert samples_per_s[3] * step_time_s[3] == pytest.approx(3 * BATCH_SIZE, rel=1e-5)
    assert callback.total_tokens == model.seen_tokens == _window_tokens(range(1, 5), accumulate=3)


def test_validation_time_is_excluded(make_trainer, make_model):
    callback = SummarizationThroughput(window=4)
    # validation after step 4 sleeps 2 x 0.3 s; training 8 tiny steps takes milliseconds
    trainer = make_trainer([callback], max_steps=8, limit_train_batches=4, num_sanity_val_steps=0)
    trainer.fit(make_model(val_sleep_s=0.3))
    assert 0 < callback.total_time < 0.3


def test_partial_last_window_counts_toward_totals_and_summary(make_trainer, make_model, lightning_caplog):
    callback = SummarizationThroughput(window=4)
    model = make_model()
    make_trainer([callback], max_steps=6, limit_val_batches=0).fit(model)
    assert callback.total_tokens == model.seen_tokens
    summary = next(m for m in lightning_caplog.messages if m.startswith("SummarizationThroughput:"))
    assert f"{model.seen_tokens:,} tokens, {6 * BATCH_SIZE} samples in" in summary and "tokens/s" in summary


def test_syncs_once_per_window_not_per_step(make_trainer, make_model, monkeypatch: pytest.MonkeyPatch):
    syncs: list[int] = []
    monkeypatch.setattr(sys.modules[SummarizationThroughput.__module__], "uses_cuda", lambda trainer: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(1))
    # 20 steps, windows of 5, validation after steps 10 and 20
    trainer = make_trainer([SummarizationThroughput(window=5)], max_steps=20, limit_train_batches=10)
    trainer.fit(make_model())
    assert len(syncs) == 4 + 2


def test_totals_survive_resume(make_trainer, make_model, tmp_path: Path):
    callback = SummarizationThroughput(window=2)
    model = make_model()
    trainer = make_trainer([callback], max_steps=4, limit_val_batches=0)
    trainer.fit(model)
    ckpt = tmp_path / "step4.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = SummarizationThroughput(window=2)
    model_2 = make_model()
    make_trainer([resumed], max_steps=8, limit_val_batches=0).fit(model_2, ckpt_path=ckpt)
    assert resumed.total_tokens == model.seen_tokens + model_2.seen_tokens
    assert resumed.total_samples == 8 * BATCH_SIZE
    assert resumed.total_time > callback.total_time


def test_rejects_bad_window():
    with pytest.raises(ValueError, match="window"):
        SummarizationThroughput(window=0)


def test_rejects_batches_it_cannot_count():
    from lit_qsum.callbacks.throughput import _count_tokens

    with pytest.raises(ValueError, match="input_ids"):
        _count_tokens(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        _count_tokens({"input_ids": torch.zeros(2, 3)})
