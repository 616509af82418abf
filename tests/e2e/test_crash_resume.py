"""A run killed anywhere resumes with ``--ckpt_path last`` and ends bitwise on the uninterrupted run's state.

The runs use the settings of the shipped GPU profiles that a resume has to reproduce (``crash_resume.yaml``: LoRA
and model dropout, accumulation 2, validation inside the epoch, an odd number of micro-batches per epoch) on the
demo's tiny T5. "The same state" is compared bit for bit: LoRA weights, AdamW's moments and step counts, the LR
schedule, the data position, and the ``last.adapter/`` folder that plain peft loads.

``test_random_sigkills_...`` SIGKILLs real processes (``crash_points.KillAt``) at random points: between and
inside optimizer steps, inside a checkpoint save between its renames, during validation; three kills, three
resumes. The others stop in-process at fixed points, one per bug of issue #12 they would catch.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crash_points import Killed
from lit_qsum.cli import main

pytestmark = pytest.mark.slow  # killed and resumed CLI fits: ~50 s on 2 CPU cores

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARGS = ["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--config", str(HERE / "crash_resume.yaml")]
MICRO_BATCHES = 22  # 12 optimizer steps of 2 micro-batches, epochs of 9: the last step of each epoch has one
FIRST_SAVE = 4  # last.ckpt at step 2, after micro-batch 4


def fit_process(cwd: Path, kill_at: str, *extra: str) -> subprocess.CompletedProcess:
    """One ``lit-qsum fit`` process in ``cwd``, SIGKILLed where ``kill_at`` says (``none``: never)."""
    env = {**os.environ, "KILL_AT": kill_at, "KILL_HOW": "sigkill", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("SAVE_AT", None)
    return subprocess.run([sys.executable, "-m", "lit_qsum", *ARGS, *extra], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """One intra-op thread, in this process as in the subprocesses (OMP_NUM_THREADS=1): the runs compared bit for bit
    then reduce in the same order, and tiny matmuls don't crawl when other processes share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit_in_process(cwd: Path, monkeypatch: pytest.MonkeyPatch, kill_at: str, *extra: str) -> None:
    """The same run in this process; ``kill_at`` raises ``Killed`` there instead of a SIGKILL."""
    with monkeypatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(sys, "argv", ["lit-qsum"])
        mp.setenv("KILL_AT", kill_at)
        mp.setenv("KILL_HOW", "raise")
        if kill_at == "none":
            main([*ARGS, *extra])
        else:
            with pytest.raises(Killed):
                main([*ARGS, *extra])


def the_run(cwd: Path) -> Path:
    [run] = [p for p in (cwd / "outputs" / "demo").iterdir() if p.is_dir()]
    return run


def last(cwd: Path) -> dict:
    return torch.load(the_run(cwd) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training_state(expected_cwd: Path, cwd: Path, context: str) -> None:
    a, b = last(expected_cwd), last(cwd)
    assert b["global_step"] == a["global_step"] == 12, context
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), f"{context}: LoRA weight {key} differs"
    [opt_a], [opt_b] = a["optimizer_states"], b["optimizer_states"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(opt_b["state"][index][name], value), f"{context}: optimizer {name} of param {index} differs"
    assert b["lr_schedulers"] == a["lr_schedulers"], context
    assert b["SummarizationDataModule"] == a["SummarizationDataModule"], context
    adapter_a = load_file(the_run(expected_cwd) / "checkpoints" / "last.adapter" / "adapter_model.safetensors")
    adapter_b = load_file(the_run(cwd) / "checkpoints" / "last.adapter" / "adapter_model.safetensors")
    assert adapter_a.keys() == adapter_b.keys()
    assert all(torch.equal(adapter_a[k], adapter_b[k]) for k in adapter_a), f"{context}: last.adapter/ differs"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("straight")
    done = fit_process(cwd, "none")
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd


def trained_micro_batches(cwd: Path) -> int:
    """Micro-batches the run's last.ckpt has trained on (0 before its first save)."""
    path = the_run(cwd) / "checkpoints" / "last.ckpt" if (cwd / "outputs").exists() else None
    if path is None or not path.exists():
        return 0
    return last(cwd)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]


# a kill point per process, each leaving the next one room: the 1st before micro-batch 10, the 2nd before 16
LATEST_KILL = (9, 15, MICRO_BATCHES)


def pick_kill(rng: random.Random, kill: int, resumed_at: int) -> str:
    """A random point after ``resumed_at`` micro-batches: in or between steps, inside a save, in validation."""
    kind = rng.choice(["batch", "batch", "save", "validation"])
    if kind == "save":  # the first process's first save creates last.ckpt: a kill there leaves nothing to resume
        return f"save:{2 if kill == 0 else rng.randint(1, 2)}:{rng.randint(1, 3)}"
    if kind == "validation":
        return "validation:1"
    return f"batch:{rng.randint(max(resumed_at + 2, FIRST_SAVE + 1), LATEST_KILL[kill])}"


def earlier(kill_at: str, kill: int, resumed_at: int) -> str:
    """A point before ``kill_at``, for a retry when the run ended (or the save had no such rename) before it."""
    kind, *numbers = kill_at.split(":")
    if kind == "save" and int(numbers[0]) > (2 if kill == 0 else 1):
        return f"save:{int(numbers[0]) - 1}:{numbers[1]}"
    lowest = max(resumed_at + 2, FIRST_SAVE + 1)
    if kind == "batch":
        assert int(numbers[0]) > lowest, f"a kill before micro-batch {numbers[0]} can't miss"
        return f"batch:{int(numbers[0]) - 1}"
    return f"batch:{lowest}"


def test_random_sigkills_resume_to_the_uninterrupted_run(straight: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_RESUME_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    history = []
    for kill in range(3):
        resumed_at = trained_micro_batches(tmp_path)
        kill_at = pick_kill(rng, kill, resumed_at)
        before = tmp_path.with_name(tmp_path.name + "-before")
        shutil.rmtree(before, ignore_errors=True)
        shutil.copytree(tmp_path, before)
        while True:
            done = fit_process(tmp_path, kill_at, *(["--ckpt_path", "last"] if kill else []))
            history.append(f"KILL_AT={kill_at}: rc {done.returncode}")
            context = f"CRASH_RESUME_SEED={seed}: {'; '.join(history)}"
            if done.returncode != 0:
                break
            # the run ended before the kill came: put the run back as it was and kill it earlier
            shutil.rmtree(tmp_path)
            shutil.copytree(before, tmp_path)
            kill_at = earlier(kill_at, kill, resumed_at)
        assert done.returncode == -9, f"{context}\n{done.stderr[-3000:]}"
    done = fit_process(tmp_path, "none", "--ckpt_path", "last")
    context = f"CRASH_RESUME_SEED={seed}: {'; '.join(history)}; then resumed to the end"
    assert done.returncode == 0, f"{context}\n{done.stderr[-3000:]}"
    assert_same_training_state(straight, tmp_path, context)
    run = the_run(tmp_path)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], context  # temps removed
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoints", "tensorboard"], context


def test_resumed_dropout_masks_are_the_uninterrupted_runs(straight: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue #12.1: every new DataLoader iterator drew its workers' seed from the global torch RNG right after the
    resume had restored it, so every later dropout mask shifted (max abs diff ~3e-3 after one resume)."""
    fit_in_process(tmp_path, monkeypatch, "batch:9")  # stopped right after the step-4 save, between steps
    fit_in_process(tmp_path, monkeypatch, "none", "--ckpt_path", "last")
    assert_same_training_state(straight, tmp_path, "stopped after micro-batch 8, resumed once")


def test_a_resume_does_not_save_again_at_its_step_mid_accumulation(straight: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue #12.2: ModelCheckpoint forgets the step it last saved at, so the resumed run wrote last.ckpt again at
    step 6 one micro-batch later: a file that counts micro-batch 12 as trained but holds none of its gradient. A
    second kill then resumed from it, dropped that micro-batch and shifted every later accumulation group."""
    fit_in_process(tmp_path, monkeypatch, "batch:12")  # micro-batches 1-11 done: step 6, saved
    fit_in_process(tmp_path, monkeypatch, "batch:13", "--ckpt_path", "last")  # micro-batch 12 done: still step 6
    progress = last(tmp_path)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert (last(tmp_path)["global_step"], progress["processed"]) == (6, 11), "last.ckpt was written again mid-step"
    fit_in_process(tmp_path, monkeypatch, "none", "--ckpt_path", "last")
    assert_same_training_state(straight, tmp_path, "killed before micro-batch 12 and again before 13")


def test_a_checkpoint_saved_mid_step_resumes_with_the_steps_gradients(straight: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue #12.2, the general case: a save that falls between micro-batches of one optimizer step (validation
    every N micro-batches, fit's end, any ModelCheckpoint) holds the gradients accumulated so far."""
    monkeypatch.setenv("SAVE_AT", "10")  # micro-batch 10 opens step 6 (9 closed epoch 0 with a step of its own)
    fit_in_process(tmp_path, monkeypatch, "batch:12")
    monkeypatch.delenv("SAVE_AT")
    mid_step = the_run(tmp_path) / "checkpoints" / "mid-step.ckpt"
    assert torch.load(mid_step, weights_only=True)["lit_qsum"]["open_step_per_rank"][0]["micro_batches_done"] == 1
    fit_in_process(tmp_path, monkeypatch, "none", "--ckpt_path", str(mid_step))
    assert_same_training_state(straight, tmp_path, "resumed from a save after micro-batch 10, mid-step")


FUSED = ["--model.optimizer.init_args.fused", "true"]  # torch's fused AdamW, as lit-qsum picks on a GPU


@pytest.fixture(scope="module")
def straight_fused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("straight-fused")
    done = fit_process(cwd, "none", *FUSED)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd


def test_the_sync_free_step_resumes_to_the_uninterrupted_run(straight_fused: Path, tmp_path: Path, monkeypatch) -> None:
    """With fused AdamW the optimizer step reads its NaN/Inf count a step later (no host sync; the GPU default): a
    run stopped mid-step and between steps, each resumed, still ends bitwise on the uninterrupted run's state."""
    from lit_qsum.steps import StepEngine

    def synced(self):
        raise AssertionError("the synced step ran: this test is about the sync-free one")

    monkeypatch.setattr(StepEngine, "_agree_on_step", synced)
    fit_in_process(tmp_path, monkeypatch, "batch:9", *FUSED)  # right after the step-4 save, between steps
    fit_in_process(tmp_path, monkeypatch, "batch:14", "--ckpt_path", "last", *FUSED)  # micro-batch 13 done: mid-step
    fit_in_process(tmp_path, monkeypatch, "none", "--ckpt_path", "last", *FUSED)
    assert_same_training_state(straight_fused, tmp_path, "fused AdamW: stopped after micro-batches 8 and 13, resumed")
    [opt] = last(tmp_path)["optimizer_states"]
    assert all(group["fused"] for group in opt["param_groups"])  # the sync-free path ran
