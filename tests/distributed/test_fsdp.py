"""QLoraFSDPStrategy on two CPU processes (gloo) through the real CLI: it must train, evaluate and checkpoint exactly
as DDP does, since it shards only the frozen base and the adapter is synced by the same code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddp_harness as ddp
from lit_qsum.cli import main

pytestmark = pytest.mark.slow  # 2-process FSDP fits through the CLI: about a minute on 2 CPU cores

FSDP = ["--config", str(ddp.HERE / "fsdp_cpu.yaml")]
CKPT = Path("outputs") / "demo" / "checkpoints" / "step2.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = str(tmp_path_factory.getbasetemp() / "lit_qsum_cache")
    out = {"ddp": tmp_path_factory.mktemp("ddp"), "fsdp": tmp_path_factory.mktemp("fsdp")}
    # FSDP computes the model's own loss (the chunked seq2seq loss needs the head outside the model's forward); the
    # DDP reference does the same, so the two differ only by FSDP's sharding. The chunked loss against the model's
    # own: tests/fastpath/test_chunked_loss.py
    # and with checkpointing, as fsdp_cpu.yaml (FSDP's activation offload runs with it)
    ddp.run(out["ddp"], "fit", "--model.speed.chunked_seq2seq_loss", "false", "--model.gradient_checkpointing", "true",
            LIT_QSUM_CACHE=cache, FAKE_GENERATE="")
    done = ddp.run(out["fsdp"], "fit", *FSDP, LIT_QSUM_CACHE=cache, FAKE_GENERATE="")  # real generate() under FSDP
    (out["fsdp"] / "output.txt").write_text(done.stdout + done.stderr)
    return out


def test_fsdp_trains_evaluates_and_checkpoints_exactly_like_ddp(runs: dict[str, Path]) -> None:
    """With FSDP's defaults: optimizer state sharded (ZeRO-1), saved activations offloaded to the host."""
    output = (runs["fsdp"] / "output.txt").read_text()
    assert "FSDP: optimizer state sharded over 2 GPUs" in output
    assert "FSDP: what the backward keeps outside the checkpointed blocks" in output
    ddp_reports, fsdp_reports = ddp.records(runs["ddp"]), ddp.records(runs["fsdp"])
    for report in fsdp_reports:
        assert report["global_step"] == ddp_reports[0]["global_step"] == 3
        assert report["metrics"]["val/num_examples"] == ddp.N_EVAL
        for key in ("val/loss", "val/rouge1", "val/rougeL"):
            assert report["metrics"][key] == ddp_reports[0]["metrics"][key], key
    # ZeRO-1: each FSDP rank holds the optimizer state of its share of the adapter; together, one device's
    whole = ddp_reports[0]["optimizer_state_numel"]
    shares = [report["optimizer_state_numel"] for report in fsdp_reports]
    assert whole > 0 and sum(shares) == whole and max(shares) < 0.6 * whole, (whole, shares)
    reference = ddp.weights(runs["ddp"], 0)["end"]
    for rank in range(ddp.WORLD):
        end = ddp.weights(runs["fsdp"], rank)["end"]
        assert end.keys() == reference.keys()
        for key in reference:
            assert torch.equal(end[key], reference[key]), key
    # same checkpoint contents: adapter, optimizer state (keyed like one device's), data position
    a, b = (torch.load(runs[k] / CKPT, weights_only=False) for k in ("ddp", "fsdp"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert a["SummarizationDataModule"] == b["SummarizationDataModule"]
    assert (runs["fsdp"] / CKPT).with_suffix(".adapter").is_dir()


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_under_fsdp_and_an_fsdp_one_on_one_process(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ddp.run(tmp_path / "fsdp-from-ddp", "fit", *FSDP, "--ckpt_path", str(runs["ddp"] / CKPT), FAKE_GENERATE="")
    straight = ddp.weights(runs["fsdp"], 0)["end"]
    resumed = ddp.weights(tmp_path / "fsdp-from-ddp", 1)["end"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # landed on the uninterrupted run's adapter
    tensors = len(straight)  # one optimizer state per adapter tensor
    # the DDP checkpoint's whole state, loaded under FSDP: each rank kept its share (ZeRO-1), together all of it
    counts = [len(r["start_optimizer"]["steps"]) for r in ddp.records(tmp_path / "fsdp-from-ddp")]
    assert sum(counts) == tensors and max(counts) < tensors, (counts, tensors)

    one = tmp_path / "one-from-fsdp"
    one.mkdir()
    monkeypatch.chdir(one)
    main(["fit", *ddp.CONFIG, *ddp.ONE_PROCESS, "--ckpt_path", str(runs["fsdp"] / CKPT)])
    report = json.loads((one / "record" / "fit-rank0.json").read_text())
    # the FSDP checkpoint, gathered from both ranks' shares, holds every tensor's state
    assert report["first_step"] == 2 and set(report["start_optimizer"]["steps"]) == {2.0}
    assert len(report["start_optimizer"]["steps"]) == tensors


@pytest.mark.slow
def test_fsdp_shards_4bit_weights_and_refuses_uint8_storage(tmp_path: Path) -> None:
    qlora = ["--model.backend", "qlora"]
    ddp.run(tmp_path / "qlora", "fit", *FSDP, *qlora, "--model.quantization.bnb_4bit_quant_storage", "float32",
            "--trainer.max_epochs", "-1", "--trainer.max_steps", "2")
    reports = ddp.records(tmp_path / "qlora")
    assert [r["global_step"] for r in reports] == [2, 2]
    ends = [ddp.weights(tmp_path / "qlora", r)["end"] for r in range(ddp.WORLD)]
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])

    (tmp_path / "uint8").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ddp.REPO)}
    done = subprocess.run([sys.executable, str(ddp.HERE / "run_cli.py"), "fit", *ddp.CONFIG, *FSDP, *qlora],
                          cwd=tmp_path / "uint8", env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "lit-qsum: error: FSDP shards floating-point tensors only" in done.stderr
    assert "--model.quantization.bnb_4bit_quant_storage bfloat16" in done.stderr
