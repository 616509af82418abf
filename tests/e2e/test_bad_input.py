"""Mistakes end in one clear ``lit-qsum: error`` naming the file, row or flag, and leave no output behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli_runner import run_cli

pytestmark = pytest.mark.slow  # each test runs the CLI up to its error: ~80 s in all on 2 CPU cores

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")


def fit(*extra: str) -> list[str]:
    return ["fit", "--config", DEMO, "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", *extra]


def test_missing_train_file(tmp_path, capsys, monkeypatch) -> None:
    err = run_cli(fit("--data.train_path", "no/such.csv"), capsys, monkeypatch, tmp_path)
    assert "lit-qsum: error: --data.train_path: no/such.csv: file not found" in err
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.ckpt"))


def test_csv_missing_columns(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("fname,text\nx_0,hello\n", encoding="utf-8")
    err = run_cli(fit("--data.train_path", str(bad)), capsys, monkeypatch, tmp_path)
    assert "bad.csv" in err and "dialogue" in err


def test_empty_summary_row_is_named(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "empty.csv"
    bad.write_text("fname,dialogue,summary\na,#Person1#: hi,ok\nb,#Person1#: yo,  \n", encoding="utf-8")
    err = run_cli(fit("--data.train_path", str(bad)), capsys, monkeypatch, tmp_path)
    assert "empty.csv" in err and "3" in err  # line 3 of the file


def test_non_utf8_file(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("fname,dialogue,summary\na,caf\xe9,ok\n".encode("latin-1"))
    err = run_cli(fit("--data.train_path", str(bad)), capsys, monkeypatch, tmp_path)
    assert "latin1.csv" in err and "UTF-8" in err


def test_unknown_config_key(tmp_path, capsys, monkeypatch) -> None:
    err = run_cli(fit("--model.lora_rnak", "8"), capsys, monkeypatch, tmp_path)
    assert err.splitlines() == ["lit-qsum: error: unrecognized arguments: --model.lora_rnak 8 "
                                "(did you mean --model.lora.rank?)",
                                "(`lit-qsum fit --help` lists every flag)"]  # not jsonargparse's 100-line usage


def test_bad_lora_rank_names_the_flag(tmp_path, capsys, monkeypatch) -> None:
    err = run_cli(fit("--model.lora.rank", "0"), capsys, monkeypatch, tmp_path)
    assert "--model.lora.rank must be > 0" in err


def test_malformed_yaml(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    err = run_cli(["fit", "--config", str(bad)], capsys, monkeypatch, tmp_path)
    assert "broken.yaml" in err or "yaml" in err.lower()


def test_missing_model_path(tmp_path, capsys, monkeypatch) -> None:
    err = run_cli(
        fit("--model.model_config", "null", "--model.model_name_or_path", "./nowhere/model"), capsys, monkeypatch, tmp_path
    )
    assert "--model.model_name_or_path" in err and "does not exist" in err


def test_forced_unsloth_with_t5_on_cpu(tmp_path, capsys, monkeypatch) -> None:
    err = run_cli(fit("--model.backend", "unsloth"), capsys, monkeypatch, tmp_path)
    assert "does not support encoder-decoder" in err


def test_fp16_with_t5_is_refused() -> None:
    # on the CPU Lightning turns 16-mixed into bf16-mixed itself, so check the rule directly
    from types import SimpleNamespace

    from lit_qsum.errors import UserInputError
    from lit_qsum.module import SummarizationModule

    module = SummarizationModule(model_config={"model_type": "t5"}, tokenizer="lit_qsum:demo")
    module.loaded = SimpleNamespace(model_type="t5")
    with pytest.raises(UserInputError, match="bf16-mixed"):
        module._check_precision("16-mixed")
    module._check_precision("bf16-mixed")
    module.loaded = SimpleNamespace(model_type="bart")
    module._check_precision("16-mixed")


def test_gpu_on_a_cpu_machine(tmp_path, capsys, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = run_cli(fit("--trainer.accelerator", "gpu"), capsys, monkeypatch, tmp_path)
    assert "gpu" in err.lower() and "lit-qsum: error" in err
    assert "--trainer.accelerator cpu" in err  # says how to fix it


def test_disk_full_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch) -> None:
    import errno

    import torch

    from lit_qsum.checkpoint_io import AdapterCheckpointIO
    from lit_qsum.errors import UserInputError

    io = AdapterCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserInputError, match="No space left on device") as raised:
        io.save_checkpoint({"global_step": 2}, target)
    # the configs fix each ModelCheckpoint's dirpath, which --trainer.default_root_dir does not move
    assert "init_args.dirpath of the config's ModelCheckpoint callbacks" in str(raised.value)
    monkeypatch.undo()
    assert torch.load(target, weights_only=False)["global_step"] == 1  # previous checkpoint intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_unwritable_predictions_folder_fails_before_predicting(tmp_path, monkeypatch) -> None:
    import errno
    import tempfile
    from types import SimpleNamespace

    from lit_qsum.callbacks.prediction_writer import SummaryCsvWriter
    from lit_qsum.errors import UserInputError

    trainer = SimpleNamespace(default_root_dir=str(tmp_path))
    (tmp_path / "ro").mkdir()
    real = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):  # the tests run as root, which ignores permission bits
        if Path(dir) == tmp_path / "ro":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    with pytest.raises(UserInputError, match=r"can't write in .*ro \(Permission denied\)"):
        SummaryCsvWriter(output_path=str(tmp_path / "ro" / "new" / "pred.csv")).setup(trainer, None, "predict")
    SummaryCsvWriter(output_path=str(tmp_path / "ok" / "pred.csv")).setup(trainer, None, "predict")  # writable: fine

    (tmp_path / "data.csv").write_text("fname,dialogue\n")
    with pytest.raises(UserInputError, match="data.csv is a file, not a folder"):
        SummaryCsvWriter(output_path=str(tmp_path / "data.csv" / "pred.csv")).setup(trainer, None, "predict")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "ro"]  # the checks leave nothing behind


@pytest.mark.parametrize("extra, expected", [
    # gpt2 is a causal LM, but its Conv1D layers have none of the default LoRA target names
    (["--model.model_config", '{"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}'],
     "no default LoRA targets found for model type 'gpt2'"),
    (["--model.lora.target_modules", "[no_such_linear]"], "--model.lora: peft rejected the LoRA config"),
])
def test_lora_targets_that_match_nothing_are_one_line(tmp_path, capsys, monkeypatch, extra, expected) -> None:
    err = run_cli(fit(*extra), capsys, monkeypatch, tmp_path)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lit-qsum: error:") and expected in err


def test_env_with_an_unknown_model_type_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    config = tmp_path / "t55.yaml"
    config.write_text("model:\n  model_config: {model_type: t55}\n", encoding="utf-8")
    err = run_cli(["env", "--config", str(config)], capsys, monkeypatch, tmp_path)
    assert "lit-qsum: error: --model.model_config: unknown model_type 't55'" in err.splitlines()
    assert "Traceback" not in err


def test_unreadable_data_file_names_the_flag_and_the_file(tmp_path, monkeypatch) -> None:
    import errno

    from lit_qsum.data.datamodule import SummarizationDataModule
    from lit_qsum.errors import UserInputError

    data = tmp_path / "train.csv"
    data.write_text("fname,dialogue,summary\na,#Person1#: hi,ok\n", encoding="utf-8")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:  # the tests run as root, which ignores permission bits
        if self == data:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    dm = SummarizationDataModule(train_path=str(data), val_path=str(data), task="seq2seq")
    with pytest.raises(UserInputError, match=r"--data.train_path: .*train.csv: can't read the file \(Permission denied\)"):
        dm.setup("fit")


@pytest.mark.parametrize("extra, expected", [
    (["--trainer.val_check_interval", "0"], "--trainer.val_check_interval must be >= 1"),
    (["--trainer.val_check_interval", "1.5"], "--trainer.val_check_interval as a fraction of an epoch must be in (0, 1]"),
    (["--model.optimizer.init_args.lr", "-0.001"], "--model.optimizer.init_args.lr must be a positive number, got -0.001"),
])
def test_values_that_fail_mid_run_are_refused_before_anything_loads(tmp_path, capsys, monkeypatch, extra, expected) -> None:
    err = run_cli(fit(*extra), capsys, monkeypatch, tmp_path)
    [line] = err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"lit-qsum: error: {expected}"), line


def test_nan_learning_rate_in_yaml(tmp_path, capsys, monkeypatch) -> None:
    overlay = tmp_path / "nan.yaml"
    overlay.write_text("model:\n  optimizer:\n    class_path: torch.optim.AdamW\n    init_args: {lr: .nan}\n")
    err = run_cli(fit("--config", str(overlay)), capsys, monkeypatch, tmp_path)
    assert err.strip() == "lit-qsum: error: --model.optimizer.init_args.lr must be a positive number, got nan"


@pytest.mark.parametrize("content, expected", [("- a\n- b\n", "holds a list, not a mapping"), ("", "is empty"),
                                               ("# only a comment\n", "is empty")])
def test_config_that_is_not_a_mapping_names_the_file(tmp_path, capsys, monkeypatch, content, expected) -> None:
    config = tmp_path / "odd.yaml"
    config.write_text(content, encoding="utf-8")
    err = run_cli(["fit", "--config", str(config)], capsys, monkeypatch, tmp_path)
    assert err.strip().splitlines()[0].startswith(f"lit-qsum: error: --config {config} {expected}"), err


def test_predict_without_a_checkpoint_stops_before_loading_the_model(tmp_path, capsys, monkeypatch) -> None:
    """An untrained LoRA adapter changes nothing: predict used to write the base model's (blank) summaries, exit 0."""
    err = run_cli(["predict", "--config", DEMO, "--trainer.logger", "false"], capsys, monkeypatch, tmp_path)
    [line] = err.strip().splitlines()
    assert line.startswith("lit-qsum: error: predict needs --ckpt_path") and "--predictions.allow_untrained true" in line
    assert not (tmp_path / "outputs").exists()  # nothing written, the demo's earlier predictions least of all
    from lit_qsum.callbacks.prediction_writer import SummaryCsvWriter

    SummaryCsvWriter(allow_untrained=True).check_checkpoint(None)  # asked for explicitly: allowed


def test_demo_config_keeps_existing_predictions() -> None:
    import yaml

    predictions = yaml.safe_load(Path(DEMO).read_text(encoding="utf-8"))["predictions"]
    assert predictions.get("overwrite", False) is False


def _refuse_writes_in(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` unwritable for the write probe (the tests run as root, which ignores permission bits)."""
    import errno
    import tempfile

    real = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)


def test_ko_extra_missing_is_one_line_and_predict_does_not_need_it(tmp_path, capsys, monkeypatch) -> None:
    from lit_qsum.module import SummarizationModule

    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # as without `pip install 'lit-qsum[ko]'`
    err = run_cli(fit("--model.rouge_tokenizer", "morpheme"), capsys, monkeypatch, tmp_path)
    [line] = err.strip().splitlines()
    assert line == "lit-qsum: error: --model.rouge_tokenizer morpheme needs kiwipiepy: pip install 'lit-qsum[ko]'"
    # predict scores nothing: the module builds, and the check only runs for stages that score
    SummarizationModule(model_config={"model_type": "t5"}, tokenizer="lit_qsum:demo", rouge_tokenizer="morpheme")


@pytest.mark.parametrize("where", ["under_a_file", "unwritable"])
def test_export_output_dir_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch, where) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "ro").mkdir()
    _refuse_writes_in(monkeypatch, tmp_path / "ro")
    out = tmp_path / ("a_file/export" if where == "under_a_file" else "ro/export")
    err = run_cli(["export", "--ckpt_path", str(tmp_path / "x.ckpt"), "--output_dir", str(out)], capsys, monkeypatch,
                  tmp_path)
    [line] = err.strip().splitlines()
    expected = "a_file is a file, not a folder" if where == "under_a_file" else "can't write in"
    assert line.startswith(f"lit-qsum: error: --output_dir {out}: ") and expected in line, line


def test_a_log_folder_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """TensorBoard writes into the run folder under --trainer.default_root_dir (lit_qsum.runs): a root under a file is
    one line naming that flag, before anything is built."""
    (tmp_path / "a_file").write_text("x")
    root = tmp_path / "a_file" / "out"
    err = run_cli(fit("--trainer.default_root_dir", str(root)), capsys, monkeypatch, tmp_path)
    [line] = err.strip().splitlines()
    assert line.startswith(f"lit-qsum: error: --trainer.default_root_dir {root}: "), line
