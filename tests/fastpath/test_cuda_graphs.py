"""CUDA-graph training steps: what they assume of the step engine (CPU, an eager stand-in for capture and
replay) and that a real capture computes the eager step (GPU)."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.fastpath import cuda_graphs
from lit_qsum.fastpath.attention import contiguous_position_bias
from lit_qsum.fastpath.cuda_graphs import StepGraphs, _Captured, always_build_sdpa_masks, unsupported_reason
from lit_qsum.module import SummarizationModule
from lit_qsum.settings import LoraSettings, SpeedSettings

TINY_T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
           "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1}


def test_mask_helpers_always_build_while_capturing_and_are_restored() -> None:
    from lit_qsum import compat

    masking_utils, names = compat.sdpa_mask_skip_helpers()
    assert names, "transformers renamed its SDPA mask-skip helpers: graphs would hit a host read while capturing"
    before = {n: getattr(masking_utils, n) for n in names}
    with always_build_sdpa_masks():
        for name in names:
            assert getattr(masking_utils, name)(torch.ones(2, 3, dtype=torch.bool), 3) is False
    assert {n: getattr(masking_utils, n) for n in names} == before


def test_graphs_are_refused_where_they_cannot_run() -> None:
    cuda = torch.device("cuda", 0)
    assert "CUDA device" in unsupported_reason(device=torch.device("cpu"), precision="bf16-mixed", sharded=False,
                                               checkpointing=False)
    assert "16-mixed" in unsupported_reason(device=cuda, precision="16-mixed", sharded=False, checkpointing=False)
    assert "FSDP" in unsupported_reason(device=cuda, precision="bf16-mixed", sharded=True, checkpointing=False)
    assert unsupported_reason(device=cuda, precision="bf16-mixed", sharded=False, checkpointing=False) is None
    assert unsupported_reason(device=cuda, precision="32-true", sharded=False, checkpointing=False) is None
    assert "compile" in unsupported_reason(device=cuda, precision="bf16-mixed", sharded=False, checkpointing=False,
                                           compiled=True)


def test_contiguous_position_bias_keeps_the_values_and_the_loss() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**{k: v for k, v in TINY_T5.items() if k != "model_type"},
                                                vocab_size=100, decoder_start_token_id=0)).eval()
    batch = {"input_ids": torch.randint(2, 100, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long),
             "labels": torch.randint(2, 100, (2, 5))}
    batch["attention_mask"][1, 6:] = 0
    attention = model.encoder.block[0].layer[0].SelfAttention
    before = attention.compute_bias(9, 9)
    with torch.no_grad():
        loss = model(**batch).loss
    assert contiguous_position_bias(model) == 2  # the first block of the encoder and of the decoder
    assert contiguous_position_bias(model) == 0  # once
    after = attention.compute_bias(9, 9)
    assert after.is_contiguous() and not before.is_contiguous()
    assert torch.equal(after, before)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, loss, rtol=0, atol=0)


class _EagerReplay:
    """Stands in for a captured graph: replaying reruns the recorded step on the static buffers."""

    def __init__(self, run) -> None:
        self.run = run

    def replay(self) -> None:
        self.run()


class EagerStandInGraphs(StepGraphs):
    """StepGraphs with capture replaced by a closure over the same static buffers, so the step engine's side of the
    contract (static gradients zeroed in place, the loss weight as a device scalar, a warm-up step, one graph per
    shape) runs on the CPU."""

    made: list[EagerStandInGraphs] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        EagerStandInGraphs.made.append(self)

    def _record(self, key, batch, backward_context):
        if self._weight is None:
            self._weight = torch.ones((), dtype=torch.float32)
        inputs = {name: batch[name].clone() for name, _ in key}
        loss_out = torch.zeros(())
        grads = list(self._grads)

        def run() -> None:
            assert all(p.grad is g for p, g in zip(self.params, grads)), "a gradient tensor was replaced"
            with backward_context():
                loss = self.loss_fn(inputs)
                (loss * self._weight).backward()
            loss_out.copy_(loss.detach())

        return _Captured(_EagerReplay(run), inputs, loss_out)  # type: ignore[arg-type]

    def _after_failed_capture(self) -> None:
        pass


class OutOfMemoryCaptures(EagerStandInGraphs):
    """Captures of shapes in ``too_big`` run out of memory."""

    too_big: set[int] = set()

    def _record(self, key, batch, backward_context):
        if batch["input_ids"].shape[1] in self.too_big:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super()._record(key, batch, backward_context)


def test_captures_that_run_out_of_memory_free_the_graphs_then_switch_them_off() -> None:
    weight = torch.nn.Parameter(torch.ones(3))

    def loss_fn(batch):
        return (batch["input_ids"].float().sum(-1, keepdim=True) * weight).mean()

    OutOfMemoryCaptures.too_big = {32}
    graphs = OutOfMemoryCaptures(loss_fn, [weight], log=lambda _: None)
    ran = [graphs.forward_backward({"input_ids": torch.ones(2, n)}, 1.0, _nullcontext) is not None
           for n in (8, 8, 32, 8, 16, 32, 8)]
    # warm-up, capture 8, OOM at 32 (graphs freed), recapture 8, capture 16, second OOM (off), eager from then on
    assert ran == [False, True, False, True, True, False, False]
    assert graphs.capture_ooms == 2 and not graphs.on and "ran out of GPU memory" in graphs.off_reason
    assert graphs.stats.captures == 3


def test_eager_micro_batches_beside_graphs_run_as_a_capture_runs_them() -> None:
    """Warm-ups (and other eager micro-batches) see a capture's global state and inputs: autocast without its weight-cast
    cache, and SDPA masks always built. Otherwise compiled blocks, warmed for another state or for a skipped (None)
    mask, recompile inside the capture, and the capture fails."""
    from lit_qsum import compat

    masking_utils, names = compat.sdpa_mask_skip_helpers()
    assert names  # transformers 5 skips all-ones masks through these helpers
    graphs = StepGraphs(lambda batch: batch, [torch.nn.Parameter(torch.zeros(2))], log=lambda _: None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_cache_enabled()
        with graphs.eager_context():
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            assert not torch.is_autocast_cache_enabled()
            assert all(getattr(masking_utils, name)() is False for name in names)
        assert torch.is_autocast_cache_enabled()
    assert all(getattr(masking_utils, name) is not cuda_graphs._never_skip for name in names)  # restored
    graphs.turn_off("test")
    with graphs.eager_context():  # graphs off: the caller's context, untouched
        assert all(getattr(masking_utils, name) is not cuda_graphs._never_skip for name in names)


def test_compiled_blocks_see_each_shape_eagerly_before_it_is_captured() -> None:
    """Under compile, a shape's first micro-batch runs eagerly (compiling and autotuning can't be captured); the
    second is captured and later ones replay. Without compile only the very first micro-batch is eager."""
    weight = torch.nn.Parameter(torch.ones(3))

    def loss_fn(batch):
        return (batch["input_ids"].float().sum(-1, keepdim=True) * weight).mean()

    def batch(length: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.ones(2, length)}

    def run(warm_each_shape: bool) -> list[bool]:
        graphs = EagerStandInGraphs(loss_fn, [weight], warm_each_shape=warm_each_shape, log=lambda _: None)
        ran = [graphs.forward_backward(batch(n), 1.0, _nullcontext) is not None for n in (8, 8, 16, 8, 16, 16)]
        assert graphs.stats.captures == 2 and graphs.stats.replays == sum(ran)
        return ran

    assert run(warm_each_shape=True) == [False, True, False, True, True, True]
    assert run(warm_each_shape=False) == [False, True, True, True, True, True]


def test_cudnn_attention_is_allowed_inside_captures_only_and_a_failing_capture_retries_without_it() -> None:
    """cuDNN attention plans per batch shape: inside a capture that is once per shape, so captures allow it while the
    process-wide switch (off, as apply_speedups leaves it on CUDA) stays off for eager steps and generation. A capture
    that fails with it on is retried without it before graphs are given up."""
    weight = torch.nn.Parameter(torch.ones(3))
    seen: list[bool] = []
    fail = {"first": True, "always": False}

    class Recording(EagerStandInGraphs):
        def _record(self, key, batch, backward_context):
            with cuda_graphs._cudnn_sdp(self.cudnn_attention):  # what the real _record wraps the capture in
                seen.append(torch.backends.cuda.cudnn_sdp_enabled())
                if fail["always"] or (fail["first"] and self.cudnn_attention):
                    raise RuntimeError("CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: cudnnFinalize failed (simulated)")
            return super()._record(key, batch, backward_context)

    def loss_fn(batch):
        return (batch["input_ids"].float().sum(-1, keepdim=True) * weight).mean()

    batch = {"input_ids": torch.ones(2, 8)}
    logged: list[str] = []
    saved = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        graphs = Recording(loss_fn, [weight], cudnn_attention=True, log=logged.append)
        with graphs.eager_context():  # the warm-up and other eager micro-batches beside the graphs use it too
            assert torch.backends.cuda.cudnn_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert graphs.forward_backward(batch, 1.0, _nullcontext) is None  # the eager warm-up
        assert graphs.forward_backward(batch, 1.0, _nullcontext) is None  # the capture with cuDNN fails: eager step
        assert graphs.on and not graphs.cudnn_attention and "capturing without it" in logged[-1]
        assert graphs.forward_backward(batch, 1.0, _nullcontext) is not None  # captured without it
        assert seen == [True, False] and not torch.backends.cuda.cudnn_sdp_enabled()  # put back after each capture
        with graphs.eager_context():  # and the eager micro-batches follow the captures
            assert not torch.backends.cuda.cudnn_sdp_enabled()

        fail["always"] = True  # a failure with cuDNN off: graphs are given up, as before
        graphs = Recording(loss_fn, [weight], cudnn_attention=False, log=logged.append)
        graphs.forward_backward(batch, 1.0, _nullcontext)
        assert graphs.forward_backward(batch, 1.0, _nullcontext) is None
        assert not graphs.on and "capture failed" in graphs.off_reason
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(saved)


class LossesShown(L.Callback):
    """The loss the progress bar would show after every training batch (the step engine's read-back mean)."""

    def __init__(self) -> None:
        self.shown: list[float | None] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.shown.append(pl_module.engine.last_loss)


def _fit(tmp_path, graphs: bool, monkeypatch: pytest.MonkeyPatch, shown: LossesShown | None = None) -> SummarizationModule:
    if graphs:
        monkeypatch.setattr(cuda_graphs, "unsupported_reason", lambda **_: None)
        monkeypatch.setattr(cuda_graphs, "StepGraphs", EagerStandInGraphs)
    L.seed_everything(3)
    module = SummarizationModule(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="lora", init_seed=3,
                                 lora=LoraSettings(rank=4, alpha=8, dropout=0.05), accumulate_grad_batches=2,
                                 speed=SpeedSettings(cuda_graphs=graphs))
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=40, max_eval_samples=4,
                                   pad_to_multiple_of=32)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, use_distributed_sampler=False,
                        callbacks=[shown] if shown is not None else [])
    trainer.fit(module, data)
    return module


def test_the_step_engine_trains_the_same_through_graph_replays(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout on, accumulation 2: replays through static buffers land on the eager run's adapter."""
    eager_shown, replayed_shown = LossesShown(), LossesShown()
    eager = _fit(tmp_path / "eager", graphs=False, monkeypatch=monkeypatch, shown=eager_shown)
    EagerStandInGraphs.made.clear()
    replayed = _fit(tmp_path / "graphs", graphs=True, monkeypatch=monkeypatch, shown=replayed_shown)
    (graphs,) = EagerStandInGraphs.made
    assert graphs.stats.replays + 1 == 12  # 6 steps x 2 micro-batches: one eager warm-up, the rest replayed
    # two padded shapes in these batches: a recapture per step would mean the engine replaced gradient tensors
    assert graphs.stats.captures == len(graphs._graphs) <= 3
    reference = dict(eager.model.named_parameters())
    for name, param in replayed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, reference[name], rtol=0, atol=0, msg=name)
    # the loss the progress bar shows: each step's mean, though a replay writes every micro-batch's loss of one shape
    # into the same tensor
    assert replayed_shown.shown == eager_shown.shown and None not in eager_shown.shown[1::2]


class TracingStandInGraphs(EagerStandInGraphs):
    """A capture runs the step's Python (recording its kernels, not running them), so what the step raises, a capture
    raises: here the forward runs once without gradients before the stand-in's replay closure is built."""

    def _record(self, key, batch, backward_context):
        with torch.no_grad():
            self.loss_fn({name: batch[name] for name, _ in key})
        return super()._record(key, batch, backward_context)


@pytest.mark.parametrize("fused", [False, True])
def test_memory_too_small_for_a_captured_shape_reaches_the_oom_scaler(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                      fused: bool) -> None:
    """A batch that can't fit runs out of memory twice: in its capture (the graphs free their memory and give it back)
    and in the eager step that follows, where the OOM scaler halves the micro-batch; smaller shapes are captured.
    ``fused``: AdamW's fused kernel, as on a GPU, whose sync-free steps give way to a synced one for the OOM's step."""
    from lit_qsum.callbacks import OOMBatchSizeScaler

    monkeypatch.setattr(cuda_graphs, "unsupported_reason", lambda **_: None)
    monkeypatch.setattr(cuda_graphs, "StepGraphs", TracingStandInGraphs)
    real_loss, sizes = SummarizationModule._loss, []

    def loss(self, batch):  # memory for fewer than 4 samples from the second optimizer step on
        sizes.append(len(batch["input_ids"]))
        if self.training and self.global_step >= 1 and len(batch["input_ids"]) >= 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(self, batch)

    monkeypatch.setattr(SummarizationModule, "_loss", loss)
    EagerStandInGraphs.made.clear()
    scaler = OOMBatchSizeScaler(verbose=False)
    optimizer = {"optimizer": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True)} if fused else {}
    module = SummarizationModule(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="lora", init_seed=3,
                                 lora=LoraSettings(rank=4, alpha=8, dropout=0.05), speed=SpeedSettings(cuda_graphs=True),
                                 **optimizer)
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=40, max_eval_samples=4,
                                   pad_to_multiple_of=32)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[scaler])
    trainer.fit(module, data)
    (graphs,) = EagerStandInGraphs.made
    assert scaler.recoveries == 1 and module.engine.micro_batch.micro_batch_size == 2
    assert graphs.capture_ooms == 1 and graphs.on  # one capture ran out of memory: the graphs stay on for smaller shapes
    assert sizes[:4] == [4, 4, 4, 2]  # eager warm-up, the capture's OOM, the eager step's OOM, then halves
    assert trainer.global_step == 4 and graphs.stats.replays > 0
    assert module.engine.pending is None and module.engine.last_loss is not None
    assert all(torch.isfinite(p).all() for p in module.model.parameters() if p.requires_grad)


# ---- on a GPU: a real capture computes the eager step ------------------------------------------------------------
def _gpu_model(checkpointing: bool, compiled: bool = False):
    from lit_qsum.backends.loader import ModelSpec, load_model
    from lit_qsum.fastpath import apply_speedups
    from lit_qsum.settings import QuantizationSettings

    spec = ModelSpec(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="qlora",
                     lora=LoraSettings(rank=8, alpha=16, dropout=0.1), quantization=QuantizationSettings(),
                     gradient_checkpointing=checkpointing, init_seed=1)
    model = load_model(spec, device=torch.device("cuda", 0)).model.train()
    apply_speedups(model, SpeedSettings(compile=compiled), device=torch.device("cuda", 0),
                   gradient_checkpointing=checkpointing, precision="bf16-mixed")  # what GPU configs train in
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def _gpu_batch(seed: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (4, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    labels = torch.randint(5, vocab, (4, 16), generator=gen)
    labels[2, 10:] = -100
    return {k: v.cuda() for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


@pytest.mark.gpu
@pytest.mark.parametrize(("checkpointing", "compiled", "cudnn"),
                         [(False, False, False), (True, False, False), (True, False, True), (True, True, False)])
def test_a_captured_step_gives_the_eager_loss_and_gradients(checkpointing: bool, compiled: bool, cudnn: bool) -> None:
    """Eager and captured steps with one seed: same loss and LoRA gradients (dropout on, as users train); with
    compiled blocks the reference is the compiled eager step (Inductor draws dropout masks its own way). ``cudnn``:
    cuDNN attention inside the capture only (the default), its reference an eager step with cuDNN attention."""
    model = _gpu_model(checkpointing, compiled)  # apply_speedups switches cuDNN attention off process-wide
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(batch):
        return model(**batch).loss

    def step_eager(batch, seed):
        for p in params:
            p.grad = torch.zeros_like(p)
        torch.cuda.manual_seed(seed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(batch)
            (loss * 0.5).backward()
        return loss.detach(), [p.grad.clone() for p in params]

    vocab = model.config.vocab_size
    first, second = _gpu_batch(1, vocab), _gpu_batch(2, vocab)
    graphs = StepGraphs(loss_fn, params, warm_each_shape=compiled, cudnn_attention=cudnn, log=lambda _: None)
    with torch.autocast("cuda", dtype=torch.bfloat16), graphs.eager_context(), cuda_graphs._cudnn_sdp(cudnn):
        # the reference steps and the warm-up step as the engine runs eager micro-batches beside graphs: under the
        # capture's autocast (no weight-cast cache) and masks, so compiled blocks compile once, for the global state
        # the capture sees, and are not recompiled inside it
        ref_loss, ref_grads = step_eager(first, seed=11)
        ref2_loss, ref2_grads = step_eager(second, seed=12)
        step_eager(second, seed=0)
    assert graphs.forward_backward(second, 0.5, _nullcontext) is None  # the engine's warm-up call
    for batch, seed, want_loss, want_grads in ((first, 11, ref_loss, ref_grads), (second, 12, ref2_loss, ref2_grads)):
        for p in params:
            p.grad.zero_()
        torch.cuda.manual_seed(seed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = graphs.forward_backward(batch, 0.5, _nullcontext)
        assert loss is not None, graphs.off_reason
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        for p, want in zip(params, want_grads):
            torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
    assert graphs.stats.captures == 1 and graphs.stats.replays == 2  # one shape: captured once, replayed twice
    assert graphs.cudnn_attention == cudnn and not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.gpu
def test_a_failed_capture_leaves_eager_steps_with_dropout_working() -> None:
    """A capture that fails (here a host read inside the step) switches graphs off, and the eager steps after it
    still draw random numbers: a failed capture otherwise leaves the CUDA generator in capture mode."""
    model = _gpu_model(checkpointing=True)
    params = [p for p in model.parameters() if p.requires_grad]
    reads = []

    def loss_fn(batch):
        loss = model(**batch).loss
        reads.append(loss.item())  # a host sync: can't be captured
        return loss

    batch = _gpu_batch(1, model.config.vocab_size)
    graphs = StepGraphs(loss_fn, params, log=lambda _: None)
    assert graphs.forward_backward(batch, 1.0, _nullcontext) is None  # warm-up: the engine runs it
    assert graphs.forward_backward(batch, 1.0, _nullcontext) is None
    assert not graphs.on and "capture failed" in graphs.off_reason
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**batch).loss
        loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in params)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.gpu
@pytest.mark.parametrize(("compiled", "cudnn"), [(False, False), (False, True), (True, False)])
def test_fit_with_graphs_matches_fit_without_on_a_gpu(tmp_path, compiled: bool, cudnn: bool, monkeypatch) -> None:
    """``cudnn``: cuDNN attention in the graphs' training steps (speed.cudnn_attention_in_graphs), against an eager
    run with it allowed everywhere; no capture may have fallen back to other kernels."""
    if compiled:  # graphs over compiled blocks are refused until this test has passed on a GPU (issue #16)
        monkeypatch.setattr(cuda_graphs, "unsupported_reason", lambda **_: None)
    seen: list = []

    class KeepGraphs(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if pl_module.step_graphs is not None and pl_module.step_graphs not in seen:
                seen.append(pl_module.step_graphs)

    def fit(graphs: bool) -> SummarizationModule:
        L.seed_everything(3)
        module = SummarizationModule(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="qlora", init_seed=3,
                                     lora=LoraSettings(rank=4, alpha=8, dropout=0.05), accumulate_grad_batches=2,
                                     gradient_checkpointing=True,
                                     speed=SpeedSettings(cuda_graphs=graphs, compile=compiled,
                                                         cudnn_attention=cudnn and not graphs,
                                                         cudnn_attention_in_graphs=cudnn))
        data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=40, max_eval_samples=4,
                                       pad_to_multiple_of=64)
        trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=6, limit_val_batches=0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            default_root_dir=tmp_path / str(graphs), use_distributed_sampler=False,
                            callbacks=[KeepGraphs()])
        trainer.fit(module, data)
        return module

    eager, replayed = fit(False), fit(True)
    (graphs,) = seen
    assert graphs.on and graphs.stats.replays > 0, graphs.summary()
    assert graphs.cudnn_attention == cudnn  # no capture fell back to other attention kernels
    torch._dynamo.reset()
    reference = dict(eager.model.named_parameters())
    for name, param in replayed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, reference[name], rtol=1e-3, atol=1e-5, msg=name)
