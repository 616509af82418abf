"""Each fit writes into a run folder of its own; ``--ckpt_path last`` finds, checks and continues it (issues #12, #13).

One short demo run (``run``, 3 steps: best.ckpt at step 2, last.ckpt at step 3) is copied into each test's own
temporary root, so a test can resume, damage or lock it without touching the others.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_qsum.cli import main

pytestmark = pytest.mark.slow  # CLI fits and resumes: ~30 s in all on 2 CPU cores

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
SHORT = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_progress_bar", "false", "--data.batch_size", "8", "--data.max_train_samples", "64",
         "--data.max_eval_samples", "4", "--data.eval_batch_size", "4", "--model.generation.max_new_tokens", "4"]


def cli(cwd: Path, *args: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(sys, "argv", ["lit-qsum"])
        main(list(args))


def fit(cwd: Path, *extra: str) -> None:
    cli(cwd, "fit", "--config", DEMO, *SHORT, *extra)


def error(cwd: Path, capsys: pytest.CaptureFixture, *args: str) -> str:
    """The one ``lit-qsum: error:`` line a command ends with (and nothing like a traceback before it)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli(cwd, *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def runs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    fit(cwd)
    return cwd


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained cwd (``outputs/demo/<run>/``) for one test."""
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    return tmp_path


def the_run(cwd: Path) -> Path:
    [run] = runs(cwd / "outputs" / "demo")
    return run


def test_a_fit_writes_one_run_folder_and_saves_last_ckpt_when_it_ends(trained: Path) -> None:
    """#13.3 and #13.4: everything of a run in one folder under --trainer.default_root_dir, and last.ckpt at the final
    step (the config saves it every 50 steps: before, a 3-step run had none, a 120-step run's was at step 100)."""
    run = the_run(trained)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.yaml", "tensorboard"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.adapter", "best.ckpt", "last.adapter",
                                                                       "last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == 2
    assert [p.name for p in (run / "tensorboard").iterdir() if p.is_dir()] == []  # no version_N folders
    assert sorted(p.name for p in trained.iterdir()) == ["outputs"]


def test_a_second_fit_never_replaces_the_first_runs_files(work: Path) -> None:
    """#13.3: a second fit with the same config replaced the first run's best.ckpt (ROUGE-L 0.95 -> a 20-step model)."""
    first = the_run(work)
    before = {p: digest(p) for p in first.rglob("*") if p.is_file()}
    fit(work, "--trainer.max_steps", "1")
    second = [run for run in runs(work / "outputs" / "demo") if run != first]
    assert len(second) == 1 and (second[0] / "checkpoints" / "last.ckpt").is_file()
    assert {p: digest(p) for p in first.rglob("*") if p.is_file()} == before


def test_default_root_dir_moves_every_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """#13.3: --trainer.default_root_dir moved nothing (checkpoint and log paths were fixed in every config), and an
    unwritable one (/proc/out) "succeeded"."""
    fit(tmp_path, "--trainer.default_root_dir", "elsewhere", "--trainer.max_steps", "1")
    [run] = runs(tmp_path / "elsewhere")
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "tensorboard").glob("events.*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]
    line = error(tmp_path, capsys, "fit", "--config", DEMO, *SHORT, "--trainer.default_root_dir", "/proc/out")
    assert line.startswith("lit-qsum: error: --trainer.default_root_dir /proc/out: can't create the run folder"), line


def test_ckpt_path_last_resumes_the_newest_run_into_its_own_log(trained: Path, work: Path) -> None:
    """#13.7: a resumed run logged to a new version_N, splitting its curves; now it continues its run's log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = the_run(work)
    fit(work, "--ckpt_path", "last", "--trainer.max_steps", "5")
    assert runs(work / "outputs" / "demo") == [run]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert [p.name for p in (run / "tensorboard").iterdir() if p.is_dir()] == []
    assert len(list((run / "tensorboard").glob("events.*"))) == 2  # one per process, in the one folder
    assert (run / "config.yaml").is_file() and (run / "config-resume-1.yaml").is_file()
    # the copied run still knows its best checkpoint (ModelCheckpoint forgets it when its folder's path changed)
    saved = torch.load(the_run(trained) / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    [key] = [key for key in saved if key.startswith("ModelCheckpoint")]
    assert resumed[key]["best_model_path"] == str((run / "checkpoints" / "best.ckpt").resolve())
    assert resumed[key]["best_model_score"] == saved[key]["best_model_score"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == [0, 1, 2, 3, 4]  # steps 1-3 from the first process, 4-5 from the resumed one: no gap, no repeat


def test_predict_validate_and_test_write_no_logs(work: Path) -> None:
    """#13.7: every command, predict included, created a new (mostly empty) version_N."""
    run = the_run(work)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for command in ("validate", "test"):
        cli(work, command, "--config", DEMO, *SHORT, "--ckpt_path", "best")
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    cli(work, "predict", "--config", DEMO, *SHORT, "--ckpt_path", "best", "--data.max_eval_samples", "2")
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == sorted([*before, (run / "predictions.csv").relative_to(work)])


@pytest.mark.parametrize("flag, value, saved", [
    ("--model.lora.rank", "4", 32),  # was: a size-mismatch traceback
    ("--model.lora.alpha", "7", 64),  # was: trained on silently with alpha 7, written into the checkpoint
    ("--model.init_seed", "3", 0),  # was: the same, with another random-init base
])
def test_ckpt_path_last_takes_the_model_from_the_checkpoint(
    work: Path, capsys: pytest.CaptureFixture, flag: str, value: str, saved: int
) -> None:
    """#12.3: --ckpt_path last skipped what an explicit path gets: the model's settings come from the checkpoint."""
    capsys.readouterr()
    fit(work, "--ckpt_path", "last", "--trainer.max_steps", "4", flag, value)
    err = capsys.readouterr().err
    assert f"using the checkpoint's {flag} {saved} (the config says {value})" in err
    ckpt = torch.load(the_run(work) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    key = flag.removeprefix("--model.").split(".")
    hparams = ckpt["hyper_parameters"]
    assert (hparams[key[0]][key[1]] if len(key) == 2 else hparams[key[0]]) == saved


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty dict"])
def test_a_damaged_last_ckpt_is_one_line_naming_the_newest_intact_one(
    work: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    """#12.4: a damaged last.ckpt gave a raw traceback."""
    checkpoints = the_run(work) / "checkpoints"
    last = checkpoints / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(b"\x00garbage" * 100)
    else:
        torch.save({}, last)
    line = error(work, capsys, "fit", "--config", DEMO, *SHORT, "--ckpt_path", "last")
    assert line.startswith(f"lit-qsum: error: --ckpt_path last: {last.relative_to(work)} is damaged: not a "), line
    best = (checkpoints / "best.ckpt").relative_to(work)
    assert line.endswith(f"the newest intact checkpoint of that run is {best} (step 2): resume from it with "
                         f"--ckpt_path {best}, or start a new run without --ckpt_path"), line
    assert runs(work / "outputs" / "demo") == [checkpoints.parent]  # nothing started


def test_a_missing_last_ckpt_stops_instead_of_restarting_over_the_old_run(work: Path, capsys) -> None:
    """#12.5: a missing last.ckpt restarted from step 0 with only a warning, and the new run overwrote best.ckpt."""
    run = the_run(work)
    (run / "checkpoints" / "last.ckpt").unlink()
    best = digest(run / "checkpoints" / "best.ckpt")
    line = error(work, capsys, "fit", "--config", DEMO, *SHORT, "--ckpt_path", "last")
    last = (run / "checkpoints" / "last.ckpt").relative_to(work)
    assert line.startswith(f"lit-qsum: error: --ckpt_path last: {last} does not exist"), line
    assert "the newest intact checkpoint of that run is" in line
    assert digest(run / "checkpoints" / "best.ckpt") == best and runs(work / "outputs" / "demo") == [run]
    shutil.rmtree(work / "outputs")
    line = error(work, capsys, "fit", "--config", DEMO, *SHORT, "--ckpt_path", "last")
    assert line == ("lit-qsum: error: --ckpt_path last: no run in outputs/demo (--trainer.default_root_dir); "
                    "start one without --ckpt_path")


HOLD_LOCK = """
import sys, time
from pathlib import Path
from lit_qsum.run_lock import RunLock
RunLock(Path(sys.argv[1])).acquire("lit-qsum fit")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_run_folder_in_use_stops_a_second_process_with_one_line(work: Path, capsys: pytest.CaptureFixture) -> None:
    """#12.6: two runs in one folder silently replaced each other's checkpoints."""
    run = the_run(work)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = error(work, capsys, "fit", "--config", DEMO, *SHORT, "--ckpt_path", "last")
        assert line.startswith(f"lit-qsum: error: {run.absolute()} is in use by process {holder.pid} on "), line
        assert "(lit-qsum fit, since " in line
        line = error(work, capsys, "fit", "--config", DEMO, *SHORT, "--run_name", run.name)
        assert line.startswith(f"lit-qsum: error: --run_name {run.name}: {Path('outputs/demo') / run.name} exists"), line
    finally:
        holder.kill()
        holder.wait()
    fit(work, "--ckpt_path", "last", "--trainer.max_steps", "4")  # the lock went with the process


def test_a_failed_fit_leaves_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """#13.7: failed runs each left a folder (a version_N) behind."""
    line = error(tmp_path, capsys, "fit", "--config", DEMO, *SHORT, "--data.train_path", "no/such.csv")
    assert "no/such.csv" in line
    assert not (tmp_path / "outputs").exists()  # nor the default_root_dir it had created
    (tmp_path / "outputs" / "demo" / "older-run").mkdir(parents=True)
    error(tmp_path, capsys, "fit", "--config", DEMO, *SHORT, "--data.train_path", "no/such.csv")
    assert runs(tmp_path / "outputs" / "demo") == [tmp_path / "outputs" / "demo" / "older-run"]  # a root in use stays


def test_lock_file_names_the_process_that_holds_it(trained: Path) -> None:
    info = json.loads((the_run(trained) / ".lock").read_text())
    assert info["command"] == "lit-qsum fit" and isinstance(info["pid"], int)
    assert time.strptime(info["since"], "%Y-%m-%d %H:%M:%S")
