"""OOMBatchSizeScaler on the real (tiny) summarizer: CUDA OOMs are faked on CPU by a memory budget (see FakeMemory)."""

import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from conftest import FakeMemory
from lit_qsum.callbacks import OOMBatchSizeScaler
from lit_qsum.errors import UserInputError
from lit_qsum.micro_batch import MicroBatchState

pytestmark = pytest.mark.slow  # real fits through the Trainer, ~25-50 s per file on 2 CPU cores

REPO = Path(__file__).resolve().parents[2]
N = 32  # training samples


def _windows(memory: FakeMemory) -> dict[int, list[int]]:
    """Samples trained on before each optimizer step, by the number of steps done before them."""
    windows: dict[int, list[int]] = {}
    for step, indices in memory.trained:
        windows.setdefault(step, []).extend(indices)
    return {step: sorted(indices) for step, indices in windows.items()}


@pytest.mark.parametrize(
    ("accumulate", "budget", "fail_calls"),
    [(1, 2, ()), (2, 2, ()), (2, float("inf"), (1,)), (2, 2, (1,))],
    # the first batch fails; the first of an accumulation window does; the second does (the first already counts);
    # the first does and then a half of it (1 sample per micro-batch, accumulation x4)
    ids=["first-batch", "accumulating", "mid-window", "nested"],
)
def test_training_goes_on_with_the_same_steps_and_samples(
    accumulate, budget, fail_calls, make_summarizer, make_summary_data, summary_trainer, read_logged, tmp_path
):
    runs = {}
    for name, run_budget, fails in [("baseline", float("inf"), ()), ("oom", budget, fail_calls)]:
        module, data = make_summarizer(accumulate_grad_batches=accumulate), make_summary_data(batch_size=4)
        memory = FakeMemory(module, train_budget=run_budget, fail_calls=fails)
        scaler = OOMBatchSizeScaler()
        logger = CSVLogger(tmp_path, name=name)
        trainer = summary_trainer([scaler], max_epochs=2, logger=logger, log_every_n_steps=1)
        trainer.fit(module, data)
        runs[name] = SimpleNamespace(module=module, data=data, memory=memory, scaler=scaler, trainer=trainer)

    base, oom = runs["baseline"], runs["oom"]
    assert oom.memory.ooms and oom.scaler.recoveries >= 1
    assert oom.trainer.global_step == base.trainer.global_step == 2 * N // (4 * accumulate)
    # micro-batch x accumulation (the effective batch) is what it was; the loader serves the halved size
    sizes = oom.module.engine.micro_batch
    assert sizes.micro_batch_size * sizes.accumulate_grad_batches == 4 * accumulate
    assert oom.data.batch_size == sizes.micro_batch_size
    assert oom.data.eval_batch_size == 8  # untouched by a training OOM
    # every sample of each epoch trained on exactly once, and in epoch 0 (same sample order) each optimizer step
    # covered exactly the samples it covered without the OOM
    steps_per_epoch = N // (4 * accumulate)
    for epoch in (0, 1):
        seen = [i for step, idx in oom.memory.trained if step // steps_per_epoch == epoch for i in idx]
        assert Counter(seen) == Counter(range(N)), f"epoch {epoch}"
    first_epoch = {s: idx for s, idx in _windows(oom.memory).items() if s < steps_per_epoch}
    assert first_epoch == {s: idx for s, idx in _windows(base.memory).items() if s < steps_per_epoch}
    # Lightning's fit loop was told the epoch grew: epoch 1 ran at the small size throughout
    assert oom.trainer.num_training_batches == N // sizes.micro_batch_size
    recoveries = read_logged(oom.trainer, "train/oom_recoveries")
    assert recoveries and max(recoveries.values()) == oom.scaler.recoveries
    micro = read_logged(oom.trainer, "train/micro_batch_size")
    assert micro[max(micro)] == sizes.micro_batch_size


TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


@pytest.mark.parametrize("task", ["seq2seq", "causal"])
def test_split_step_gives_the_unsplit_gradient(task, make_summarizer, make_summary_data, summary_trainer):
    class FirstStepGradients(Callback):
        def __init__(self) -> None:
            self.grads: dict[str, torch.Tensor] = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            if not self.grads:
                self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    grads = {}
    # batch of 4 whole; split 2 + 2; split 2 + (1 + 1), an OOM inside the already split batch
    for name, budget, fails in [("whole", float("inf"), ()), ("halves", 2, ()), ("nested", 2, (2,))]:
        model = {"model_config": TINY_LLAMA} if task == "causal" else {}
        module = make_summarizer(gradient_clip_val=None, **model)
        memory = FakeMemory(module, train_budget=budget, fail_calls=fails)
        capture = FirstStepGradients()
        data = make_summary_data(task=task, batch_size=4)
        summary_trainer([OOMBatchSizeScaler(), capture], max_steps=1).fit(module, data)
        grads[name] = capture.grads
        if name == "nested":
            assert memory.ooms == [4, 2] and [len(idx) for _, idx in memory.trained] == [2, 1, 1]
    assert grads["whole"] and grads["whole"].keys() == grads["halves"].keys() == grads["nested"].keys()
    for name in grads["whole"]:
        for split in ("halves", "nested"):
            torch.testing.assert_close(grads[split][name], grads["whole"][name], rtol=1e-5, atol=1e-7)


def test_checkpoint_keeps_scaled_sizes_and_resume_uses_them(
    make_summarizer, make_summary_data, summary_trainer, tmp_path
):
    baseline_module = make_summarizer()
    baseline = summary_trainer([])
    baseline.fit(baseline_module, make_summary_data(batch_size=4))

    module = make_summarizer()
    memory = FakeMemory(module, train_budget=2)
    # a checkpoint after step 1, the step whose batch of 4 was split: its data position must count 4 samples
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    summary_trainer([OOMBatchSizeScaler(), checkpoint], max_steps=3, enable_checkpointing=True).fit(
        module, make_summary_data(batch_size=4)
    )
    ckpt = tmp_path / "ckpt" / "epoch=0-step=1.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert (state["lit_qsum"]["micro_batch_limit"], state["lit_qsum"]["accumulate_grad_batches"]) == (2, 2)
    saved = state["callbacks"]["OOMBatchSizeScaler"]
    assert (saved["recoveries"], saved["micro_batch_size"], saved["train_batch_size"]) == (1, 2, 2)
    assert state["datamodule_hyper_parameters"]["batch_size"] == 4  # the config; the scaled size is state

    resumed_module, resumed_data, scaler = make_summarizer(), make_summary_data(batch_size=4), OOMBatchSizeScaler()
    resumed = FakeMemory(resumed_module)  # no OOM now: the sizes come from the checkpoint
    trainer = summary_trainer([scaler])
    trainer.fit(resumed_module, resumed_data, ckpt_path=ckpt, weights_only=False)
    resumed_sizes = resumed_module.engine.micro_batch
    assert (resumed_sizes.micro_batch_size, resumed_sizes.accumulate_grad_batches) == (2, 2)
    assert resumed_data.batch_size == 2 and {len(idx) for _, idx in resumed.trained} == {2}
    assert scaler.recoveries == 1
    before = [i for step, idx in memory.trained if step == 0 for i in idx]
    after = [i for _, idx in resumed.trained for i in idx]
    assert Counter(before + after) == Counter(range(N))
    # as many optimizer steps as without any OOM, and the LR schedule ended where it did
    assert trainer.global_step == baseline.global_step == N // 4
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == baseline.lr_scheduler_configs[
        0
    ].scheduler.get_last_lr()


def test_eval_oom_halves_only_the_eval_batch(make_summarizer, make_summary_data, summary_trainer):
    results = {}
    for name, budget in [("baseline", float("inf")), ("oom", 2)]:
        module, data = make_summarizer(), make_summary_data(batch_size=4, eval_batch_size=8)
        memory = FakeMemory(module, eval_budget=budget)
        trainer = summary_trainer([OOMBatchSizeScaler()], max_steps=2, limit_val_batches=1.0, val_check_interval=2)
        trainer.fit(module, data)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        predictions = trainer.predict(module, data)
        results[name] = SimpleNamespace(
            module=module, data=data, memory=memory, metrics=metrics, predictions=predictions
        )

    base, oom = results["baseline"], results["oom"]
    assert oom.memory.ooms[:2] == [8, 4]  # the validation batch, then its first half
    # every validation and prediction sample was generated for exactly once per run, in chunks that fit
    assert Counter(i for idx in oom.memory.generated for i in idx) == Counter(
        i for idx in base.memory.generated for i in idx
    )
    assert max(len(idx) for idx in oom.memory.generated) == 2
    assert oom.metrics.keys() == base.metrics.keys() and {"val/loss", "val/rougeL"} <= oom.metrics.keys()
    for key, value in base.metrics.items():
        assert oom.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    def summaries(batches: list[dict]) -> dict[int, str]:
        return {i: text for batch in batches for i, text in zip(batch["index"], batch["summary"])}

    assert summaries(oom.predictions) == summaries(base.predictions) and len(summaries(base.predictions)) == 8
    assert len(oom.predictions) == 4  # predict's loader was built after the OOMs, at the halved size
    # only evaluation shrank: later loaders use the halved size, training sizes are as configured
    sizes = oom.module.engine.micro_batch
    assert oom.data.eval_batch_size == 2 and sizes.eval_micro_batch_size == 2
    assert oom.data.batch_size == 4 and sizes.micro_batch_size is None
    assert sizes.accumulate_grad_batches == 1


def test_floor_stops_through_the_cli_with_what_to_change(monkeypatch, capsys, tmp_path):
    from lit_qsum.cli import main
    from lit_qsum.module import SummarizationModule

    def out_of_memory(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")

    monkeypatch.setattr(SummarizationModule, "_loss", out_of_memory)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    with pytest.raises(SystemExit) as exc:
        main([
            "fit", "--config", str(REPO / "configs" / "demo.yaml"), "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false",
            f"--trainer.callbacks+={REPO / 'callbacks' / 'oom.yaml'}",
        ])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lit-qsum: error:" in err and "micro-batch of 1" in err
    for advice in ("--data.encoder_max_len", "--model.lora.rank", "--model.gradient_checkpointing true", "rtx4060"):
        assert advice in err


def test_under_ddp_it_stops_with_the_sizes_to_restart_with():
    trainer = SimpleNamespace(
        world_size=2, global_rank=1, global_step=7, datamodule=SimpleNamespace(batch_size=8, eval_batch_size=None),
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    sizes = MicroBatchState(accumulate_grad_batches=2, micro_batches_done=1)
    module = SimpleNamespace(engine=SimpleNamespace(micro_batch=sizes, sharded=False, syncs_gradients_per_step=False))
    with pytest.raises(UserInputError, match="rank 1") as err:
        OOMBatchSizeScaler().handle_train_oom(trainer, module, 8, RuntimeError("CUDA out of memory"))
    assert "--data.batch_size 4 --model.accumulate_grad_batches 4" in str(err.value)
    assert sizes.micro_batch_size is None and trainer.datamodule.batch_size == 8  # nothing changed in place


def test_under_ddp_ranks_share_resumed_sizes_and_the_smallest_eval_batch():
    class FakeStrategy:
        root_device = torch.device("cpu")

        def broadcast(self, obj):
            return (2, 4, 3)  # rank 0's view of (micro-batch, accumulation, eval batch)

        def reduce(self, tensor, reduce_op):
            assert reduce_op == "min"
            return torch.tensor(2.0)  # another rank had to shrink its evaluation batch further

    data = SimpleNamespace(batch_size=8, eval_batch_size=None)
    trainer = SimpleNamespace(world_size=2, global_rank=1, datamodule=data, strategy=FakeStrategy())
    sizes = MicroBatchState()
    module = SimpleNamespace(engine=SimpleNamespace(micro_batch=sizes))
    scaler = OOMBatchSizeScaler()
    trainer.train_dataloader = None  # not built yet: nothing to resize
    scaler.on_fit_start(trainer, module)
    assert (sizes.micro_batch_size, sizes.accumulate_grad_batches, data.batch_size) == (2, 4, 2)
    assert data.eval_batch_size == 3  # pinned at the old training size, then rank 0's saved evaluation size
    scaler.on_validation_end(trainer, module)
    assert data.eval_batch_size == scaler.eval_batch_size == 2


def test_rejects_bad_min_micro_batch():
    with pytest.raises(ValueError, match="min_micro_batch"):
        OOMBatchSizeScaler(min_micro_batch=0)
