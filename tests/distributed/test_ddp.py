"""Two CPU processes (DDP on gloo, forked ranks) through the real CLI: what must hold on several GPUs.

One fit (``ddp_fit``) with a fake CUDA OOM on rank 1 at optimizer step 1, a full epoch of 37 samples (4 global batches
of 8, then an uneven one), validation on 9 examples (one rank gets a padding batch) and a checkpoint at step 2; then
predictions, and resumes with another number of processes. "Summaries" are the first words of each dialogue
(``run_cli.fake_summary``), so ROUGE and the predictions file do not depend on how samples were sharded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

import run_cli
from ddp_harness import CONFIG, N_EVAL, N_TRAIN, ONE_PROCESS, WORLD, records, run, weights
from lit_qsum.cli import main
from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.data.formats import ColumnMap, load_records
from lit_qsum.data.synthetic import bundled_path
from lit_qsum.module import SummarizationModule

pytestmark = pytest.mark.slow  # 2-process DDP fits through the CLI: ~40 s on 2 CPU cores


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ddp-fit")
    # a module-scoped fixture runs outside conftest's per-test cache setting: name the session's cache here
    cache = str(tmp_path_factory.getbasetemp() / "lit_qsum_cache")
    run(cwd, "fit", FAKE_OOM_RANK="1", FAKE_OOM_STEP="1", LIT_QSUM_CACHE=cache)
    return cwd


def test_an_oom_on_one_rank_is_recovered_in_place_and_all_ranks_agree(ddp_fit: Path) -> None:
    ranks = records(ddp_fit)
    assert len(ranks) == WORLD
    for report in ranks:
        # 4 x 2 per rank before; rank 1 ran out of memory at step 1, every rank adopted 2 x 4 at that optimizer step
        assert (report["micro_batch_limit"], report["accumulate_grad_batches"], report["batch_size"]) == (2, 4, 2)
        assert report["recoveries"] == 1 and report["global_step"] == 3  # the epoch ran to its end
    end = [weights(ddp_fit, r)["end"] for r in range(WORLD)]
    assert end[0].keys() == end[1].keys()
    for key in end[0]:
        assert torch.equal(end[0][key], end[1][key]), f"{key}: the ranks' adapters drifted apart"
        assert not torch.equal(end[0][key], weights(ddp_fit, 0)["start"][key]) or "lora_B" not in key


def test_train_sampler_shards_the_epoch_without_overlap(ddp_fit: Path) -> None:
    per_rank = [report["trained"] for report in records(ddp_fit)]
    assert len(per_rank[0]) == len(per_rank[1])  # the same number of steps on every rank
    for batches in zip(*per_rank):
        assert set(batches[0]).isdisjoint(batches[1]) or len(set(batches[0] + batches[1])) == 1
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert set(seen) == set(range(N_TRAIN))  # every sample, the uneven last global batches included
    # the documented padding: the last global batch had 1 sample (after the OOM halved batches) for 2 ranks
    assert len(seen) - N_TRAIN <= WORLD - 1


def test_validation_rouge_counts_every_example_once(ddp_fit: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(SummarizationModule, "generate", lambda self, batch: [run_cli.fake_summary(d) for d in batch["dialogue"]])
    module = SummarizationModule(model_config={"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4,
                                               "num_layers": 1, "num_decoder_layers": 1}, tokenizer="lit_qsum:demo",
                                 backend="lora")
    data = SummarizationDataModule(task="seq2seq", max_eval_samples=N_EVAL, eval_batch_size=4, encoder_max_len=64,
                                   decoder_max_len=16)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        use_distributed_sampler=False)
    [one_process] = trainer.validate(module, data)
    two_processes = records(ddp_fit)[0]["metrics"]
    assert one_process["val/num_examples"] == two_processes["val/num_examples"] == N_EVAL
    assert one_process["val/rouge1"] > 0.1
    for key in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_sum"):
        assert two_processes[key] == pytest.approx(one_process[key], abs=1e-6), key


def test_predictions_are_written_once_in_input_order(ddp_fit: Path) -> None:
    cwd = ddp_fit / "predict"
    run(cwd, "predict", "--ckpt_path", str(ddp_fit / "outputs" / "demo" / "checkpoints" / "step2.ckpt"))
    with open(cwd / "outputs" / "demo" / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    source = load_records(bundled_path("test"), ColumnMap("fname", "dialogue", ["summary"], "topic"),
                          require_summary=False)[:N_EVAL]
    assert [row["fname"] for row in rows] == [r.fname for r in source]
    assert [row["summary"] for row in rows] == [run_cli.fake_summary(r.dialogue) for r in source]


def _check_resume(first: list[list[list[int]]], resumed: dict, checkpoint: dict, world_after: int) -> set[int]:
    """``first``: each rank's training batches up to the checkpoint; ``resumed``: the resumed run's rank-0 report.

    Returns the samples trained on before the checkpoint."""
    assert resumed["first_step"] == checkpoint["global_step"] == 2
    assert resumed["world_size"] == world_after
    assert set(resumed["start_optimizer"]["steps"]) == {2.0}  # AdamW's state carried over, not restarted
    seen_before = {i for batches in first for batch in batches for i in batch}
    sampler = checkpoint["SummarizationDataModule"]["train_sampler"]
    assert sampler["consumed_samples"] == len(seen_before)  # consumed samples are global (all ranks)
    return seen_before


@pytest.mark.slow
def test_resume_on_one_process_from_a_two_process_checkpoint(ddp_fit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = ddp_fit / "outputs" / "demo" / "checkpoints" / "step2.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    cwd = ddp_fit / "resume-1"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    main(["fit", *CONFIG, *ONE_PROCESS, "--ckpt_path", str(ckpt)])
    [resumed] = [json.loads((cwd / "record" / "fit-rank0.json").read_text())]
    first = [report["trained"][:4] for report in records(ddp_fit)]  # 4 loader batches made steps 1 and 2
    seen_before = _check_resume(first, resumed, checkpoint, world_after=1)
    # the OOM-scaled sizes came along (micro-batch 2 x 4) and the epoch went on with exactly the samples not yet seen
    assert (resumed["micro_batch_limit"], resumed["accumulate_grad_batches"], resumed["batch_size"]) == (2, 4, 2)
    after = [i for batch in resumed["trained"] for i in batch]
    assert sorted(after) == sorted(set(range(N_TRAIN)) - seen_before)
    start = torch.load(cwd / "record" / "fit-rank0.pt", weights_only=True)["start"]
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(start[key], value), f"{key} was not restored"


@pytest.mark.slow
def test_resume_on_two_processes_from_a_one_process_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    monkeypatch.chdir(first_dir)
    main(["fit", *CONFIG, *ONE_PROCESS, "--trainer.max_steps", "2"])
    ckpt = first_dir / "outputs" / "demo" / "checkpoints" / "step2.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    first = [json.loads((first_dir / "record" / "fit-rank0.json").read_text())["trained"]]
    run(second_dir, "fit", "--ckpt_path", str(ckpt))
    resumed = records(second_dir)
    seen_before = _check_resume(first, resumed[0], checkpoint, world_after=WORLD)
    after = [i for report in resumed for batch in report["trained"] for i in batch]
    assert sorted(after) == sorted(set(range(N_TRAIN)) - seen_before)  # 21 left: 8 + 8 + 5, no padding needed
    end = [weights(second_dir, r)["end"] for r in range(WORLD)]
    for key in end[0]:
        assert torch.equal(end[0][key], end[1][key])
