"""``lit-qsum sweep`` on the offline demo: one short fit per LoRA rank, a table, the best rank, TensorBoard runs."""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_qsum.cli import main
from lit_qsum.module import SummarizationModule
from lit_qsum.sweep import RankResult, best_rank, format_table

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
RANKS = (4, 8)
FAST = [
    "--data.max_eval_samples", "8", "--data.eval_batch_size", "8", "--model.generation.max_new_tokens", "8",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # accumulation 2: the single validation must still come after the last optimizer step, not half-way
    work = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(sys, "argv", ["lit-qsum"])
        main(["sweep", "--config", DEMO, "--ranks", *map(str, RANKS), "--max_steps", "2",
              "--", *FAST, "--model.accumulate_grad_batches", "2"])
    return work / "outputs" / "demo"


def read_rows(swept: Path) -> list[dict[str, str]]:
    with (swept / "sweep" / "sweep.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_lists_every_rank_with_final_validation_metrics(swept: Path) -> None:
    rows = read_rows(swept)
    assert [int(r["rank"]) for r in rows] == list(RANKS)
    assert [int(r["alpha"]) for r in rows] == [2 * r for r in RANKS]
    for row in rows:
        for name in ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_sum", "val/loss"):
            assert math.isfinite(float(row[name])), (name, row)
        assert float(row["peak_memory_mib"]) > 0 and float(row["fit_s"]) > 0 and not row["error"]
    table = (swept / "sweep" / "sweep.md").read_text(encoding="utf-8")
    for rank in RANKS:
        assert re.search(rf"^\| {rank} \| {2 * rank} \|", table, re.MULTILINE), table


def test_trainable_params_grow_with_rank(swept: Path) -> None:
    params = [int(r["trainable_params"]) for r in read_rows(swept)]
    assert 0 < params[0] < params[1]
    assert params[1] == 2 * params[0]  # LoRA adds rank x (in + out) per adapted layer


def test_best_rank_is_the_max_of_the_metric_column(swept: Path) -> None:
    rows = read_rows(swept)
    best = max(rows, key=lambda r: (float(r["val/rougeL"]), -int(r["rank"])))  # ties: the smaller rank
    found = re.search(r"best rank by val/rougeL: (\d+)", (swept / "sweep" / "sweep.md").read_text(encoding="utf-8"))
    assert found and int(found.group(1)) == int(best["rank"]) and int(found.group(1)) in RANKS


def test_each_rank_logs_to_its_own_tensorboard_run_and_nothing_is_checkpointed(swept: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for rank in RANKS:
        run = swept / "sweep" / f"rank-{rank}"
        events = list(run.rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for rank {rank}"
        acc = EventAccumulator(str(events[0].parent))
        acc.Reload()
        assert len(acc.Scalars("val/rougeL")) == 1  # validated once, at the end
        config = yaml.safe_load(next(run.rglob("config.yaml")).read_text(encoding="utf-8"))
        assert config["model"]["lora"]["rank"] == rank and config["model"]["lora"]["alpha"] == 2 * rank
        assert config["trainer"]["max_steps"] == 2 and config["trainer"]["val_check_interval"] == 4
    assert not list(swept.parent.rglob("*.ckpt"))
    assert not (swept / "checkpoints").exists()  # the config's checkpoint folder is left alone


def test_best_rank_prefers_smaller_rank_on_ties_and_lower_loss() -> None:
    runs = [RankResult(16, metrics={"val/rougeL": 0.3, "val/loss": 2.0}),
            RankResult(4, metrics={"val/rougeL": 0.3, "val/loss": 2.5}),
            RankResult(8, metrics={"val/rougeL": 0.1, "val/loss": 1.5}),
            RankResult(32, error="out of memory")]
    assert best_rank(runs, "val/rougeL").rank == 4
    assert best_rank(runs, "val/loss").rank == 8
    assert best_rank([RankResult(4)], "val/rougeL") is None


def test_a_sweep_where_every_rank_ties_says_so() -> None:
    tied = [RankResult(4, metrics={"val/rougeL": 0.0}), RankResult(8, metrics={"val/rougeL": 0.0})]
    assert "every rank tied, so this is only the smallest" in format_table(tied, "val/rougeL")
    apart = [RankResult(4, metrics={"val/rougeL": 0.1}), RankResult(8, metrics={"val/rougeL": 0.2})]
    assert "tied" not in format_table(apart, "val/rougeL")


def test_a_rank_that_runs_out_of_memory_is_recorded_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = SummarizationModule.training_step

    def step(self: SummarizationModule, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.spec.lora.rank == 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SummarizationModule, "training_step", step)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    main(["sweep", "--config", DEMO, "--ranks", "8", "4", "--max_steps", "1", "--", *FAST, "--data.max_eval_samples", "4"])
    rows = read_rows(tmp_path / "outputs" / "demo")
    assert [(r["rank"], r["error"]) for r in rows] == [("8", "out of memory"), ("4", "")]
    assert rows[0]["val/rougeL"] == "n/a" and math.isfinite(float(rows[1]["val/loss"]))
    assert "best rank by val/rougeL: 4" in (tmp_path / "outputs" / "demo" / "sweep" / "sweep.md").read_text("utf-8")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--ranks", "0", "8"], "--ranks"),
        (["--ranks", "8", "x"], "--ranks"),
        (["--ranks", "8", "8"], "--ranks"),
        (["--ranks"], "--ranks"),
        (["--ranks", "8", "--max_steps", "0"], "--max_steps"),
        (["--ranks", "8", "--", "--model.lora.rank", "4"], "--model.lora.rank"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", DEMO, *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-qsum: error:") and named in err, err
    assert not (tmp_path / "outputs").exists()  # refused before any run
