"""The user's path end to end on the offline demo: fit → checkpoint + adapter → predict CSV → reload with peft."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_qsum.cli import main

pytestmark = pytest.mark.slow  # CLI fits and predictions: ~30 s in all on 2 CPU cores

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")


def fit_args(*extra: str) -> list[str]:
    # the demo config writes under ./outputs/demo/<run>; tests run it from a temp dir
    return [
        "fit", "--config", DEMO,
        "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.max_eval_samples", "8", "--data.eval_batch_size", "8",
        "--model.generation.max_new_tokens", "8",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    lightning_log = logging.getLogger("lightning.pytorch")  # rank_zero_info's messages pass through it
    lightning_log.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(work)
            mp.setattr(sys, "argv", ["lit-qsum"])
            main(fit_args())
    finally:
        lightning_log.removeHandler(handler)
    (work / "fit.log").write_text("\n".join(lines), encoding="utf-8")
    [run] = (work / "outputs" / "demo").iterdir()  # the run folder: outputs/demo/<start time>/
    return run


def test_fit_says_the_effective_batch_the_length_and_where_outputs_go(trained: Path) -> None:
    log = (trained.parents[2] / "fit.log").read_text(encoding="utf-8").splitlines()
    [summary] = [line for line in log if line.startswith("run: ")]
    assert summary.startswith("run: batch 16 x 1 accumulated x 1 device(s) = 16 samples per optimizer step; "
                              "6 optimizer steps; checkpoints -> "), summary
    assert f"{trained.resolve()}/checkpoints;" in summary, summary
    assert summary.endswith(f"logs -> outputs/demo/{trained.name}/tensorboard"), summary


def test_fit_on_the_cpu_says_how_many_threads_it_uses(trained: Path) -> None:
    import os

    from lit_qsum.cpu_threads import choose_cpu_threads, usable_cores

    log = (trained.parents[2] / "fit.log").read_text(encoding="utf-8").splitlines()
    lines = [line for line in log if line.startswith("cpu threads: ")]
    threads = choose_cpu_threads(usable_cores(), os.environ)
    if threads is None:  # OMP_NUM_THREADS is set here: lit-qsum leaves torch alone and says nothing
        assert not lines
        return
    assert len(lines) == 1 and lines[0].startswith(f"cpu threads: {threads} of {usable_cores()} cores"), lines


def test_fit_writes_checkpoint_adapter_and_tensorboard_logs(trained: Path) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    adapter = trained / "checkpoints" / "best.adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    events = list(trained.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    state = torch.load(ckpt, weights_only=False)
    keys = list(state["state_dict"])
    # only trainable (LoRA) weights: the frozen base is rebuilt from its source, never re-serialized
    assert keys and all("lora_" in k for k in keys), keys[:5]
    assert state["lit_qsum"]["backend"] == "lora"
    assert "peft_adapter" not in state  # written as the adapter folder instead
    assert "optimizer_states" in state and state["global_step"] in (3, 6)  # a validation step


def test_tensorboard_has_losses_and_rouge(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_file = next(trained.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(event_file.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_sum"} <= tags, tags


def test_predict_writes_submission_csv_in_input_order(
    trained: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    out_csv = trained / "submission.csv"
    main([
        "predict", "--config", DEMO, "--ckpt_path", str(trained / "checkpoints" / "best.ckpt"),
        "--trainer.enable_progress_bar", "false",
        "--model.generation.max_new_tokens", "8",
        "--predictions.output_path", str(out_csv), "--predictions.overwrite", "false",
    ])
    with out_csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["fname", "summary"]
    with (REPO / "lit_qsum" / "data" / "bundled" / "test.csv").open(encoding="utf-8", newline="") as handle:
        expected = [r["fname"] for r in csv.DictReader(handle)]
    assert [r[0] for r in rows[1:]] == expected
    # a second predict refuses to overwrite, before generating anything
    with pytest.raises(SystemExit) as exc:
        main([
            "predict", "--config", DEMO, "--ckpt_path", str(trained / "checkpoints" / "best.ckpt"),
            "--predictions.output_path", str(out_csv), "--predictions.overwrite", "false",
        ])
    assert exc.value.code == 2


def test_adapter_reloads_with_plain_peft_and_matches(trained: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from lit_qsum.data.tokenizer import load_tokenizer

    adapter = trained / "checkpoints" / "best.adapter"
    import json

    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_path), str(adapter)).eval()
    state = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    loaded = dict(model.named_parameters())
    for key, value in state.items():
        peft_key = key.removeprefix("model.")
        assert torch.equal(loaded[peft_key].detach(), value), key
    tok = load_tokenizer("lit_qsum:demo")
    ids = tok(["#Person1#: Hello. #Person2#: Hi."], return_tensors="pt").input_ids
    assert model.generate(input_ids=ids, max_new_tokens=4).shape[0] == 1


def test_console_script_and_module_entry_point_run() -> None:
    for cmd in (["lit-qsum", "--help"], [sys.executable, "-m", "lit_qsum", "--help"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        for sub in ("fit", "validate", "test", "predict"):
            assert sub in done.stdout


def test_tensorboard_hparams_carry_final_rouge(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    event_dir = next(trained.rglob("events.out.tfevents.*")).parent
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in session.experiment.metric_infos}
    assert {"val/rouge1", "val/rougeL", "val/rouge_sum"} <= metric_tags
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["backend_chosen"].string_value == "lora"


def test_predict_takes_the_model_from_the_checkpoint_and_the_rest_from_the_flags(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Lightning alone would replace every --model.* flag with the checkpoint's value, silently."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    out_csv = trained / "short.csv"
    main([
        "predict", "--config", DEMO, "--ckpt_path", str(trained / "checkpoints" / "best.ckpt"),
        "--trainer.enable_progress_bar", "false",
        "--model.generation.max_new_tokens", "2",  # how to run: the flag wins
        "--model.lora.rank", "4",  # what the model is: the checkpoint's rank 32 wins, and the user is told
        "--predictions.output_path", str(out_csv),
    ])
    err = capsys.readouterr().err
    assert "using the checkpoint's --model.lora.rank 32 (the config says 4)" in err
    with out_csv.open(encoding="utf-8", newline="") as handle:
        summaries = [row["summary"] for row in csv.DictReader(handle)]
    assert summaries and max(len(s.split()) for s in summaries) <= 2


@pytest.mark.parametrize("content", [None, b"fname,dialogue\n", b"PK\x03\x04 truncated"])
def test_missing_or_unreadable_checkpoint_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, content: bytes | None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    ckpt = tmp_path / "model.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--config", DEMO, "--ckpt_path", str(ckpt)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    expected = "no such file" if content is None else "not a readable Lightning checkpoint"
    assert err.startswith(f"lit-qsum: error: --ckpt_path {ckpt}: {expected}"), err


def test_validate_of_a_checkpoint_reports_its_training_step(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """validate restores no loop state, so Lightning's global_step is 0 there; the line names the checkpoint's step."""
    ckpt = trained / "checkpoints" / "best.ckpt"
    step = torch.load(ckpt, weights_only=False)["global_step"]
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("lightning.pytorch").addHandler(handler)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    try:
        main(["validate", "--config", DEMO, "--ckpt_path", str(ckpt), "--trainer.logger", "false",
              "--data.max_eval_samples", "8", "--data.eval_batch_size", "8", "--model.generation.max_new_tokens", "4",
              "--trainer.callbacks+=lit_qsum.callbacks.progress.SummarizationProgressBar",
              "--trainer.callbacks.plain", "true"])
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    [line] = [line for line in lines if line.startswith("validation at step")]
    assert line.startswith(f"validation at step {step}: ") and step > 0, line
