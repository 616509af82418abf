"""Run folders: every ``lit-qsum fit`` writes into a folder of its own under ``--trainer.default_root_dir``.

    outputs/demo/                       --trainer.default_root_dir: the runs of one config
      2026-11-30_14-03-12/              one run; --run_name NAME chooses the name
        config.yaml                     the config it was started with (config-resume-1.yaml, ... per resume)
        checkpoints/                    best.ckpt + best.adapter/, last.ckpt + last.adapter/
        tensorboard/                    one log for the whole run: a resume continues it
        predictions.csv                 lit-qsum predict with a checkpoint of this run
        .lock                           held by the process that trains in this folder

A resume (``--ckpt_path last``, or a checkpoint inside a run folder) continues its run in place; a new fit never
writes into an existing run. ``last`` and ``best`` name a checkpoint of the newest run under the root (the one
most recently started or resumed) or of ``--run_name``. The lock (``flock``, released by the kernel when the
process dies, even by SIGKILL) stops a second process from training in a folder that is in use.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_qsum.errors import UserInputError
from lit_qsum.run_lock import LOCK, RunLock

CHECKPOINTS = "checkpoints"
ALIASES = ("last", "best")
DEFAULT_ROOT = "outputs"
# set by the process that opened the run, for the ranks Lightning's subprocess launcher starts from it
RUN_DIR_ENV = "LIT_QSUM_RUN_DIR"


def is_run(folder: Path) -> bool:
    """A folder that ``fit`` created (it has the run lock file)."""
    return (folder / LOCK).is_file()


def run_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint lies in (``<run>/checkpoints/X.ckpt``), if it lies in one."""
    parent = Path(ckpt_path).absolute().parent
    return parent.parent if parent.name == CHECKPOINTS and is_run(parent.parent) else None


def newest_run(root: Path) -> Path | None:
    """The run under ``root`` most recently started or resumed (its lock file is rewritten then)."""
    if not root.is_dir():
        return None
    runs = [folder for folder in root.iterdir() if folder.is_dir() and is_run(folder)]
    return max(runs, key=lambda folder: ((folder / LOCK).stat().st_mtime_ns, folder.name), default=None)


def checkpoint_problem(path: Path, resume: bool) -> str | None:
    """Why ``path`` can't be used (None if it can): missing, unreadable, not Lightning's, or without training state."""
    if not path.is_file():
        return "no such file"
    try:
        checkpoint = _load_header(path)
    except Exception as err:  # noqa: BLE001 - truncated zip, garbage, a pickle of something else...
        first = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else ""
        return f"not a readable Lightning checkpoint ({type(err).__name__}: {first})"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (it has no state_dict)"
    missing = [key for key in ("global_step", "loops", "optimizer_states") if key not in checkpoint]
    if resume and missing:
        return f"holds no training state to resume (no {missing[0]}; saved with weights only?)"
    return None


def _load_header(path: Path) -> Any:
    """The checkpoint memory-mapped: its small entries are read, its tensors only when touched."""
    import torch  # noqa: PLC0415 - the CLI imports this module before it needs torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the pre-zip format: read it all


def _global_step(path: Path) -> int:
    return int(_load_header(path).get("global_step", -1))


def first_log_step(ckpt_path: Path) -> int:
    """The first step a run resumed from ``ckpt_path`` logs at (loggers count loader batches, not optimizer steps)."""
    loops = _load_header(ckpt_path).get("loops") or {}
    done = loops.get("fit_loop", {}).get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0)
    return int(done) + 1  # saved before the batch that made the checkpoint was counted, and counted on restart


def resolve_alias(alias: str, root: Path, run_name: str | None, resume: bool) -> Path:
    """``--ckpt_path last|best`` -> that checkpoint of ``--run_name`` or of the newest run under ``root``.

    A missing or damaged file stops with one line naming the newest intact checkpoint of the run (the choice to
    resume from it is the user's: a silent fallback would drop the steps trained since, or restart from step 0).
    """
    run = root / run_name if run_name else newest_run(root)
    if run_name and not is_run(run):
        raise UserInputError(f"--run_name {run_name}: no such run in {root} (--trainer.default_root_dir)")
    if run is None:
        what = "start one without --ckpt_path" if resume else "train one with lit-qsum fit first"
        raise UserInputError(f"--ckpt_path {alias}: no run in {root} (--trainer.default_root_dir); {what}")
    wanted = run / CHECKPOINTS / f"{alias}.ckpt"
    problem = checkpoint_problem(wanted, resume)
    if problem is None:
        return wanted
    if problem == "no such file":
        problem = "does not exist" + (" (the run was stopped before its first save?)" if alias == "last" else "")
    else:
        problem = f"is damaged: {problem}"
    intact = []
    for candidate in sorted((run / CHECKPOINTS).glob("*.ckpt")):
        if candidate != wanted and checkpoint_problem(candidate, resume) is None:
            intact.append((_global_step(candidate), candidate))
    if intact:
        step, best = max(intact)
        verb = "resume from" if resume else "use"
        hint = (f"the newest intact checkpoint of that run is {best} (step {step}): {verb} it with --ckpt_path {best}"
                + (", or start a new run without --ckpt_path" if resume else ""))
    else:
        hint = (f"that run has no intact checkpoint; --run_name picks another run of {root}"
                + (", or start a new run without --ckpt_path" if resume else ""))
    raise UserInputError(f"--ckpt_path {alias}: {wanted} {problem}; {hint}")


def runs_root(config: Namespace) -> Path:
    """``--trainer.default_root_dir``: the folder that holds the runs of a config."""
    return Path(config.trainer.get("default_root_dir") or DEFAULT_ROOT).expanduser()


def place_loggers(trainer: Namespace, run: Path, purge_step: int | None) -> None:
    """TensorBoard and CSV logs go to ``<run>/<name>/`` without a ``version_N``: a resume continues its run's log.

    ``purge_step`` (a resume): TensorBoard hides what the killed process logged from that step on, which the
    resumed run logs again, instead of drawing both. Other loggers (W&B, MLflow...) keep their own settings.
    """
    if trainer.get("logger") in (None, True):
        # Lightning's default logger, without the placeholder hp_metric: the module fills HPARAMS with the final ROUGE
        trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                   init_args=Namespace(name="tensorboard", default_hp_metric=False))
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        if not isinstance(logger, Namespace) or "class_path" not in logger:
            continue
        module, _, name = logger.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, (TensorBoardLogger, CSVLogger))):
            continue
        args = logger.get("init_args") or Namespace()
        folder = args.get("name") or ("tensorboard" if issubclass(cls, TensorBoardLogger) else "csv")
        args.save_dir, args.name, args.version = str(run), "", folder
        if purge_step is not None and issubclass(cls, TensorBoardLogger):
            args.purge_step = purge_step  # passed on to torch's SummaryWriter
        logger.init_args = args


def shown(path: Path) -> str:
    """``path`` as the user typed its root: relative to the working folder where it lies under it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def new_run_name() -> tuple[str, bool]:
    """A name every process of one launch agrees on, and whether ``-2``, ``-3``... may be added if it is taken.

    Processes that torchrun or SLURM start each run this code and must pick the same folder, so they take the job
    id; Lightning's own launcher passes the folder on in ``LIT_QSUM_RUN_DIR``. One process takes its start time.
    """
    processes = max(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("SLURM_NTASKS", "1")))
    if processes > 1:
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if job == "none":
            raise UserInputError(
                f"{processes} processes were started by a launcher without a job id: give them all the same "
                "--run_name (e.g. --run_name $JOB), so they write one run folder"
            )
        return f"job-{job}", False
    return time.strftime("%Y-%m-%d_%H-%M-%S"), True


class RunFolder:
    """The folder one ``fit`` trains in: chosen, created, locked, repaired, and removed again if the run failed empty."""

    def __init__(self, path: Path, resume: bool, opener: bool = True, numbered: bool = False) -> None:
        """
        Args:
            path: The run folder.
            resume: It exists and is continued (from a checkpoint inside it).
            opener: This process creates and locks it (rank 0); other ranks only write where rank 0 says.
            numbered: A new run whose name may get ``-2``, ``-3``... if another run took it first.
        """
        self.path = path
        self.resume = resume
        self.opener = opener
        self.numbered = numbered
        self.lock: RunLock | None = None
        self.made_parents: list[Path] = []  # the folders above the run that ``open`` created, deepest first

    @classmethod
    def for_fit(cls, root: Path, run_name: str | None, ckpt_path: str | None, rank: int) -> RunFolder:
        """Where a ``fit`` goes: the run of its checkpoint (a resume), else a new run named ``run_name`` or by time."""
        inherited = os.environ.get(RUN_DIR_ENV)
        if rank != 0 and inherited:
            return cls(Path(inherited), resume=True, opener=False)
        resumed = run_of_checkpoint(ckpt_path) if ckpt_path else None
        if resumed is not None:
            if run_name and resumed.name != run_name:
                raise UserInputError(f"--run_name {run_name}: --ckpt_path {ckpt_path} belongs to run {resumed.name}; "
                                     "a resume continues the run of its checkpoint")
            return cls(resumed, resume=True, opener=rank == 0)
        if run_name is not None and (run_name.strip() in ("", ".", "..") or Path(run_name).name != run_name):
            raise UserInputError(f"--run_name {run_name!r}: must be a plain folder name")
        name, numbered = (run_name, False) if run_name else new_run_name()
        return cls(root / name, resume=False, opener=rank == 0, numbered=numbered)

    def open(self, command: str) -> list[str]:
        """Create (new run) and lock the folder; on a resume, repair its checkpoint folder. Returns what was repaired."""
        if not self.opener:
            return []
        from lit_qsum.checkpoint_io import repair_checkpoint_folder  # noqa: PLC0415 - imports torch

        name = self.path.name
        self.made_parents = [p for p in self.path.parents if not p.exists()]
        for number in range(2, 1000):
            try:
                self.path.mkdir(parents=True, exist_ok=self.resume)
                break
            except FileExistsError as err:
                if not self.numbered:  # a new run never writes into another run's folder
                    raise UserInputError(
                        f"--run_name {name}: {self.path} exists; resume it with --ckpt_path last --run_name {name}, "
                        "or choose another name"
                    ) from err
                self.path = self.path.with_name(f"{name}-{number}")  # two runs started in the same second
            except OSError as err:
                raise UserInputError(
                    f"--trainer.default_root_dir {self.path.parent}: can't create the run folder {name} there "
                    f"({err.strerror or err})"
                ) from err
        self.lock = RunLock(self.path)
        self.lock.acquire(command)
        os.environ[RUN_DIR_ENV] = str(self.path.absolute())
        return repair_checkpoint_folder(self.path / CHECKPOINTS) if self.resume else []

    def close(self, failed: bool, trained: bool = False) -> None:
        """Release the lock; a new run that failed before it trained or saved anything is removed, with the folders
        above it that it created (while they are empty)."""
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        os.environ.pop(RUN_DIR_ENV, None)
        if failed and not self.resume and not trained and not any((self.path / CHECKPOINTS).glob("*.ckpt")):
            import shutil  # noqa: PLC0415

            shutil.rmtree(self.path, ignore_errors=True)
            for parent in self.made_parents:  # e.g. a default_root_dir made for this run, unless another run is there now
                try:
                    parent.rmdir()
                except OSError:
                    break


def next_config_name(run: Path) -> str:
    """``config.yaml`` for a new run; ``config-resume-N.yaml`` for its N-th resume (the first one is kept)."""
    if not (run / "config.yaml").exists():
        return "config.yaml"
    n = 1
    while (run / f"config-resume-{n}.yaml").exists():
        n += 1
    return f"config-resume-{n}.yaml"


def repair_if_idle(run: Path) -> None:
    """Before ``validate``/``test``/``predict`` read a run's checkpoint: repair its folder unless a fit is running."""
    lock = RunLock(run)
    try:
        lock.acquire("repair", record=False)
    except UserInputError:
        return  # a fit owns the folder, and its saves keep every checkpoint whole
    try:
        from lit_qsum.checkpoint_io import repair_checkpoint_folder  # noqa: PLC0415

        for line in repair_checkpoint_folder(run / CHECKPOINTS):
            print(f"lit-qsum: {line}", file=sys.stderr)
    finally:
        lock.release()
