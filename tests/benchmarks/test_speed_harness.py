"""``benchmarks/speed.py``: the smoke run end to end on the CPU, variant parsing, and the no-overwrite rule."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEED = REPO / "benchmarks" / "speed.py"
KEYS = {"shape", "tool", "variant", "tokens_per_s", "peak_allocated_gib", "peak_reserved_gib", "gpu", "date",
        "step_time_s", "mfu", "loss_check", "micro_batch", "timed_steps", "versions", "error", "gpu_time_per_token_us",
        "gpu_busy_share", "graph_captures", "first_step_s", "steady_tokens_per_s", "captures_in_window_steps"}


def run_speed(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(SPEED), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


@pytest.fixture(scope="module")
def speed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path, str]:
    out = tmp_path_factory.mktemp("speed")
    # tiny-bart: its linears have biases, which broke the hf recipe once the loss check had repacked bnb weights
    done = run_speed("--smoke", "--shapes", "tiny-bart", "--warmup", "1", "--steps", "2", "--micro-batch", "8",
                     "--out", str(out), "--what", "smoke-test")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads((out / f"{today()}-smoke-test.json").read_text())
    return records, out, done.stdout


@pytest.mark.slow
def test_smoke_records(smoke: tuple[list[dict[str, Any]], Path, str]) -> None:
    records, out, stdout = smoke
    assert {r["tool"] for r in records} == {"hf", "lit-qsum"}
    for r in records:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["error"] is None, r["error"]
        assert r["tokens_per_s"] > 0 and r["step_time_s"] > 0 and 0 < r["non_pad_share"] <= 1
        assert r["timed_steps"] == 2 and r["micro_batch"] == 8 and r["gpu"] == "cpu"
        assert r["peak_allocated_gib"] is None and r["mfu"] is None  # no CUDA, no peak FLOP/s
        assert set(r["versions"]) == {"torch", "transformers", "peft", "bitsandbytes", "lightning"}
        assert math.isfinite(r["loss_check"]["eval_loss"])
    hf, lit = (next(r for r in records if r["tool"] == tool) for tool in ("hf", "lit-qsum"))
    # same weights, zero-init LoRA B, fp32 on the CPU: the two models compute the same function
    assert lit["loss_check"]["eval_loss"] == pytest.approx(hf["loss_check"]["eval_loss"], rel=1e-5)
    assert lit["loss_check"]["rel_diff_vs_hf"] < 1e-5
    markdown = (out / f"{today()}-smoke-test.md").read_text()
    assert "| hf | recipe |" in markdown and "| lit-qsum | default |" in markdown and "loss check" in markdown
    assert "| lit-qsum | default |" in stdout  # the table is printed, for a GPU tool that returns the output's tail


@pytest.mark.slow  # two harness runs: ~7 s on 2 CPU cores
def test_existing_results_are_not_overwritten(tmp_path: Path) -> None:
    existing = tmp_path / f"{today()}-seq2seq-qlora-speed-smoke.json"
    existing.write_text("[]")
    done = run_speed("--smoke", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "exists" in done.stderr and str(existing) in done.stderr
    assert existing.read_text() == "[]"
    assert not existing.with_suffix(".md").exists()


def test_variant_dicts_become_settings_dataclasses(speed: ModuleType) -> None:
    from lit_qsum.settings import LoraSettings

    kwargs = speed.lit_module_kwargs("nodrop", {"lora": {"dropout": 0.0}, "gradient_checkpointing": False})
    # a partial dict goes on top of the harness's LoRA shape
    assert kwargs["lora"] == LoraSettings(rank=16, alpha=32, dropout=0.0)
    assert kwargs["gradient_checkpointing"] is False
    with pytest.raises(ValueError, match="module.lora has no field"):
        speed.lit_module_kwargs("bad", {"lora": {"rnak": 8}})
    with pytest.raises(ValueError, match="no argument 'nope'"):
        speed.lit_module_kwargs("bad", {"nope": 1})
    with pytest.raises(ValueError, match="set by the harness"):
        speed.lit_module_kwargs("bad", {"optimizer": "sgd"})
    # qlora unless a variant measures another backend (lit-qsum's Unsloth backend on decoder-only shapes)
    assert kwargs["backend"] == "qlora"
    assert speed.lit_module_kwargs("u", {"backend": "unsloth"})["backend"] == "unsloth"


def test_variant_parsing(speed: ModuleType) -> None:
    variants = speed.parse_variants(['pad64={"data": {"pad_to_multiple_of": 64}}', "plain={}"])
    assert variants["pad64"]["data"] == {"pad_to_multiple_of": 64} and variants["plain"]["module"] == {}
    for bad in (["noequals"], ["a={"], ['a={"other": {}}'], ['a={"data": {"pad": 8}}'], ["a={}", "a={}"]):
        with pytest.raises(ValueError, match="--lit-variant"):
            speed.parse_variants(bad)


def test_synthetic_samples_are_seeded_and_end_in_eos(speed: ModuleType) -> None:
    lengths = speed.SMOKE_LENGTHS
    samples = speed.synthetic_samples(64, 1000, 1, lengths, seed=3)
    assert samples == speed.synthetic_samples(64, 1000, 1, lengths, seed=3)
    for s in samples:
        assert lengths["encoder"].minimum <= len(s["input_ids"]) <= lengths["encoder"].cap
        assert lengths["decoder"].minimum <= len(s["labels"]) <= lengths["decoder"].cap
        assert s["input_ids"][-1] == 1 and s["labels"][-1] == 1
        assert all(5 <= t < 1000 for t in s["input_ids"][:-1] + s["labels"][:-1])


def test_decoder_only_samples_are_prompt_and_summary_rows(speed: ModuleType) -> None:
    lengths = speed.SMOKE_LENGTHS
    rows = speed.synthetic_samples(32, 1000, 1, lengths, seed=3, causal=True)
    pairs = speed.synthetic_samples(32, 1000, 1, lengths, seed=3)
    for row, pair in zip(rows, pairs):  # the same lengths as the seq2seq samples of the seed; the summary ends in eos
        assert set(row) == {"prompt_ids", "target_ids"} and row["target_ids"][-1] == 1
        assert len(row["prompt_ids"]) == len(pair["input_ids"]) and len(row["target_ids"]) == len(pair["labels"])
    assert {"qwen2.5-1.5b", "tiny-llama"} <= set(speed.benchmark_shapes())


def test_runs_of_a_dotted_shape_keep_their_own_files(speed: ModuleType, tmp_path: Path, monkeypatch) -> None:
    """qwen2.5-1.5b's runs once shared one result file (``with_suffix`` cut the name at the dot), so a failed run
    was reported with the figures of the run before it."""

    def fake_worker(cmd, stdout, **_):
        spec = json.loads(Path(cmd[-1]).read_text())
        stdout.write(f"log of {spec['tool']}/{spec['variant']['name']}\n")
        if spec["variant"]["name"] == "default":
            Path(spec["result_path"]).write_text(json.dumps({"tokens_per_s": 1.0, "step_time_s": 1.0,
                                                             "peak_allocated_gib": 1.0, "loss_check": {"eval_loss": 1.0}}))
        return subprocess.CompletedProcess(cmd, 0 if spec["variant"]["name"] == "default" else 1)

    monkeypatch.setattr(speed.subprocess, "run", fake_worker)
    base = {"shape": "qwen2.5-1.5b", "date": "2026-11-30", "micro_batch": 16, "steps": 2, "num_params": 1}
    logs = tmp_path / "logs"
    ran = speed.launch_worker({**base, "tool": "lit-qsum", "variant": {"name": "default", "module": {}, "data": {}}},
                              tmp_path, 10, logs)
    failed = speed.launch_worker({**base, "tool": "lit-qsum",
                                  "variant": {"name": "unsloth", "module": {"backend": "unsloth"}, "data": {}}},
                                 tmp_path, 10, logs)
    assert ran["tokens_per_s"] == 1.0 and not ran.get("error")
    assert failed["variant"] == "unsloth" and failed["error"] and failed["tokens_per_s"] is None
    assert sorted(p.name for p in logs.iterdir()) == ["qwen2.5-1.5b--lit-qsum--default.log",
                                                      "qwen2.5-1.5b--lit-qsum--unsloth.log"]


def test_worker_timeouts_end_every_run_by_the_deadline(speed: ModuleType) -> None:
    assert speed.worker_timeout(None, 300) == 300  # no deadline: --worker-timeout
    assert speed.worker_timeout(1000.0, 300) == 300
    assert speed.worker_timeout(200.0, 300) == 195  # cut short: 5 s left to write the results
    assert speed.worker_timeout(speed.MIN_RUN_S - 1, 300) is None  # not started


def test_runs_past_the_deadline_are_recorded_as_not_started(tmp_path: Path) -> None:
    """A GPU call's command limit kills everything; with --deadline-s the harness stops starting runs and still writes
    its results (the 2026-11-30 call that ran past the limit brought nothing back)."""
    done = run_speed("--smoke", "--shapes", "tiny-bart", "--tools", "hf", "lit-qsum", "--warmup", "1", "--steps", "1",
                     "--out", str(tmp_path), "--what", "deadline", "--deadline-s", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads((tmp_path / f"{today()}-deadline.json").read_text())
    assert [r["tool"] for r in records] == ["hf", "lit-qsum"]
    assert all(r["error"].startswith("not started") and r["tokens_per_s"] is None for r in records)
    assert (tmp_path / f"{today()}-deadline.md").exists()


class _FakeEvent:
    """A CUDA event's timestamp, in ms, for the steady-state arithmetic off a GPU."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def elapsed_time(self, end: _FakeEvent) -> float:
        return end.ms - self.ms


def test_steady_tokens_per_s_leaves_out_the_timed_steps_that_captured_a_graph(speed: ModuleType) -> None:
    import torch  # noqa: PLC0415
    from speed_worker import StepWindow  # noqa: PLC0415  (speed.py put benchmarks/ on sys.path)

    window = StepWindow(warmup=2, steps=3, cuda=False)
    assert window.steady()["steady_tokens_per_s"] is None  # off a GPU: no events, no figure
    window.cuda = True
    # window start at 0 ms; step 3 takes 100 ms, step 4 (a capture) 900 ms, step 5 200 ms
    window.events = [_FakeEvent(ms) for ms in (0.0, 100.0, 1000.0, 1200.0)]
    window.step_tokens = [torch.tensor(1000), torch.tensor(5000), torch.tensor(2000)]
    window.mark_capture(1)  # a warm-up step's capture is not the window's
    window.mark_capture(4)
    steady = window.steady()
    assert steady["captures_in_window_steps"] == 1 and steady["steady_steps"] == 2
    assert steady["steady_tokens_per_s"] == pytest.approx(3000 / 0.3)
    window.mark_capture(3)
    window.mark_capture(5)
    assert window.steady()["steady_tokens_per_s"] is None  # every timed step captured: no steady figure
