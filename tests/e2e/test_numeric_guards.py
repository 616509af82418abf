"""NaN/Inf losses: the optimizer step holding one is skipped whole, counted, and a run of them stops with advice.

The check is one device-side count read once per optimizer step, not a host sync per micro-batch. With torch's fused
Adam/AdamW in one process (what lit-qsum picks on a GPU) it is not even a sync: the kernel skips the update on the
device, and the host reads the count at the next step, when it is long done."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lit_qsum import checkpoint_contents
from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.distributed import grad_sync
from lit_qsum.errors import UserInputError
from lit_qsum.module import SummarizationModule
from lit_qsum.steps import StepEngine

TINY = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 1,
        "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}


def fit(monkeypatch: pytest.MonkeyPatch, tmp_path, bad_calls: set[int], steps: int = 6, limit: int = 3, accumulate: int = 1,
        fused: bool = False, callbacks: list | None = None, precision: str = "32-true"):
    """``fused``: torch's fused AdamW, as lit-qsum picks on a GPU: the step that skips on the device, without a sync."""
    extra = {"optimizer": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True)} if fused else {}
    module = SummarizationModule(model_config=TINY, tokenizer="lit_qsum:demo", backend="lora", max_consecutive_nonfinite=limit,
                                 accumulate_grad_batches=accumulate, **extra)
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=64, max_eval_samples=4)
    real_loss, calls = SummarizationModule._loss, {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        value = real_loss(self, batch)
        return value * float("nan") if calls["n"] in bad_calls and self.training else value

    monkeypatch.setattr(SummarizationModule, "_loss", loss)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, use_distributed_sampler=False,
                        callbacks=callbacks or [], precision=precision)
    trainer.fit(module, data)
    return module, trainer


def test_nan_losses_are_skipped_and_counted(monkeypatch, tmp_path) -> None:
    module, trainer = fit(monkeypatch, tmp_path, bad_calls={2, 3})
    assert module.engine.nonfinite.total == 2
    assert trainer.global_step == 6  # the run went on to its last step
    for p in module.model.parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all()  # a NaN never reached the weights


def test_a_run_of_nan_losses_stops_with_the_usual_causes(monkeypatch, tmp_path) -> None:
    with pytest.raises(UserInputError, match="3 optimizer steps in a row had non-finite losses.*bf16-mixed"):
        fit(monkeypatch, tmp_path, bad_calls=set(range(1, 100)))


def test_one_nan_micro_batch_skips_its_whole_step_and_is_read_once_per_step(monkeypatch, tmp_path) -> None:
    reads = {"n": 0}
    real_agree = grad_sync.agree

    def agree(values, device):
        reads["n"] += 1
        return real_agree(values, device)

    monkeypatch.setattr(grad_sync, "agree", agree)
    # micro-batches 1-2 are step 1, 3-4 step 2 (micro-batch 4 is NaN, so micro-batch 3's gradient is dropped too)
    module, trainer = fit(monkeypatch, tmp_path, bad_calls={4}, steps=4, accumulate=2)
    assert module.engine.nonfinite.total == 1 and module.engine.nonfinite.in_a_row == 0
    assert trainer.global_step == 4
    assert reads["n"] == 5  # once per optimizer step (4 taken + 1 skipped), not once per micro-batch (10)
    assert all(torch.isfinite(p).all() for p in module.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("precision", ["16-mixed", "32-true"])
def test_gradient_clipping_sees_unscaled_gradients(tmp_path, precision) -> None:
    """One SGD step (lr 1) with the norm clipped to 1e-4 moves the LoRA weights by exactly 1e-4, also under 16-mixed,
    whose GradScaler multiplies the gradients by 2**16 until it unscales them inside optimizer.step()."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    bart = {"model_type": "bart", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 1024,
            "dropout": 0.0}  # not T5: lit-qsum refuses float16 for the T5 family
    module = SummarizationModule(model_config=bart, tokenizer="lit_qsum:demo", backend="lora", gradient_clip_val=1e-4,
                                 optimizer=lambda params: torch.optim.SGD(params, lr=1.0), scheduler=None,
                                 lr_decay="constant", warmup_ratio=0.0)
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=8, max_eval_samples=4)
    # on a CPU Lightning turns precision="16-mixed" into bf16; the plugin given whole keeps float16 and its scaler
    plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))] \
        if precision == "16-mixed" else []
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, plugins=plugins)
    before: dict[str, torch.Tensor] = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            before.update({n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad})

    trainer.callbacks.append(Snapshot())
    trainer.fit(module, data)
    after = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    moved = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(after[n] - before[n]) for n in before]))
    assert moved == pytest.approx(1e-4, rel=1e-3)  # the gradient norm is ~0.009: the clip is what bounds the step



# ---- one process, fused AdamW: the step skips on the device and the host reads the count one step later ------------
class StepRecorder(L.Callback):
    """The adapter and the optimizer's state after every training batch, and whether the engine read anything."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.adam_steps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad})
        state = trainer.optimizers[0].state
        self.adam_steps.append(float(next(iter(state.values()))["step"]) if state else 0.0)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # bf16-mixed: what every GPU config runs
def test_fused_adamw_steps_skip_nan_updates_on_the_device_without_a_host_read(monkeypatch, tmp_path, precision) -> None:
    reads = {"agree": 0, "resolved": 0}
    real_agree, real_resolve = grad_sync.agree, StepEngine.resolve_pending

    def agree(values, device):
        reads["agree"] += 1
        return real_agree(values, device)

    def resolve(self, log=True):
        reads["resolved"] += self.pending is not None
        return real_resolve(self, log)

    monkeypatch.setattr(grad_sync, "agree", agree)
    monkeypatch.setattr(StepEngine, "resolve_pending", resolve)
    recorder = StepRecorder()
    module, trainer = fit(monkeypatch, tmp_path, bad_calls={3}, steps=6, fused=True, callbacks=[recorder],
                          precision=precision)
    assert reads["agree"] == 0 and reads["resolved"] == 6  # no synced agreement; each step read back once
    assert module.engine.nonfinite.total == 1 and module.engine.nonfinite.in_a_row == 0
    # step 3's update was skipped on the device: weights and Adam's step count stay; the step still counts
    assert all(torch.equal(recorder.weights[2][n], recorder.weights[1][n]) for n in recorder.weights[1])
    assert not all(torch.equal(recorder.weights[3][n], recorder.weights[2][n]) for n in recorder.weights[2])
    assert recorder.adam_steps == [1.0, 2.0, 2.0, 3.0, 4.0, 5.0]
    assert trainer.global_step == 6
    assert all(torch.isfinite(p).all() for p in module.model.parameters() if p.requires_grad)
    assert module.engine.last_loss is not None and module.engine.pending is None  # the last step read at train end


def test_the_sync_free_step_trains_as_the_synced_step_does(monkeypatch, tmp_path) -> None:
    """No NaN: the same weights whether the fused step skips nothing on the device or reads the count first."""
    L.seed_everything(1)
    deferred, _ = fit(monkeypatch, tmp_path / "a", bad_calls=set(), steps=4, fused=True, accumulate=2)
    monkeypatch.setattr(StepEngine, "_skips_on_device", lambda self, optimizer: False)
    L.seed_everything(1)
    synced, _ = fit(monkeypatch, tmp_path / "b", bad_calls=set(), steps=4, fused=True, accumulate=2)
    reference = dict(synced.model.named_parameters())
    for name, param in deferred.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, reference[name]), name
    assert deferred.engine.last_loss == pytest.approx(synced.engine.last_loss)


def test_a_run_of_nan_losses_stops_the_sync_free_step_too(monkeypatch, tmp_path) -> None:
    with pytest.raises(UserInputError, match="3 optimizer steps in a row had non-finite losses"):
        fit(monkeypatch, tmp_path, bad_calls=set(range(1, 100)), steps=8, fused=True)


def test_a_checkpoint_counts_the_step_before_it(monkeypatch, tmp_path) -> None:
    """The last step's NaN count is read before a checkpoint saves the counts (and at train end)."""
    saved = []

    class Saver(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if trainer.global_step == 2:  # right after step 2, whose loss was NaN: its count is still pending
                trainer.save_checkpoint(tmp_path / "step2.ckpt")
                state = torch.load(tmp_path / "step2.ckpt", weights_only=False)[checkpoint_contents.STATE_KEY]
                saved.append(state["nonfinite_total"])

    module, _ = fit(monkeypatch, tmp_path, bad_calls={2}, steps=3, fused=True, callbacks=[Saver()])
    assert saved == [1] and module.engine.nonfinite.total == 1
