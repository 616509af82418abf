"""The DDP decisions, checked under 2-process CPU DDP: throughput sums ranks, the memory max is over ranks."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a 2-process DDP fit: ~15 s on 2 CPU cores

HERE = Path(__file__).parent
GIB = 1024**3


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        [sys.executable, str(HERE / "ddp_cpu_fit.py"), str(out)], cwd=HERE, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    [metrics] = (out / "logs").glob("version_*/metrics.csv")
    with open(metrics) as f:
        return list(csv.DictReader(f))


def test_throughput_counts_tokens_of_all_ranks(ddp_run: Path):
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen_tokens"] != ranks[1]["seen_tokens"]  # each rank saw its own shard
    for report in ranks:
        assert report["total_tokens"] == ranks[0]["seen_tokens"] + ranks[1]["seen_tokens"]
        assert report["total_samples"] == 2 * 10 * 2  # ranks x steps x batch size
    for row in _rows(ddp_run):
        if row["perf/samples_per_s"]:
            # whole-job samples per optimizer step: 2 ranks x batch size 2
            assert float(row["perf/samples_per_s"]) * float(row["perf/step_time_s"]) == pytest.approx(4, rel=1e-5)


def test_memory_summary_has_every_ranks_peak(ddp_run: Path):
    for rank in (0, 1):
        report = json.loads((ddp_run / f"rank{rank}.json").read_text())
        assert report["peak_allocated_bytes_per_rank"] == [GIB, 2 * GIB]


def test_memory_logs_rank_zero_values_and_max_over_ranks(ddp_run: Path):
    rows = [row for row in _rows(ddp_run) if row["mem/peak_allocated_gib"]]
    assert [int(row["step"]) for row in rows] == [4, 9]
    for row in rows:
        assert float(row["mem/peak_allocated_gib"]) == 1.0  # rank 0's own
        assert float(row["mem/peak_allocated_gib_max_rank"]) == 2.0  # rank 1's
