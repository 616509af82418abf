"""The ``lit-qsum`` command: LightningCLI's fit/validate/test/predict plus ``env``.

``lit-qsum fit --config configs/demo.yaml`` parses the YAML into ``SummarizationModule`` (model),
``SummarizationDataModule`` (data), the Trainer and a ``SummaryCsvWriter`` (predictions), checks every
value against the constructors' type hints, then runs ``trainer.fit``. Mistakes a user can fix end in
one ``lit-qsum: error: ...`` line, not a traceback (set ``LIT_QSUM_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_qsum import compat, runs
from lit_qsum.callbacks.prediction_writer import SummaryCsvWriter
from lit_qsum.callbacks.progress import SummarizationProgressBar
from lit_qsum.callbacks.run_config_saver import RunConfigSaver
from lit_qsum.callbacks.run_folder_keeper import RunFolderKeeper
from lit_qsum.callbacks.tensorboard_summaries import TensorBoardSummaries
from lit_qsum.checkpoint_io import AdapterCheckpointIO
from lit_qsum.config_checks import check_settings, read_config_file
from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.distributed import close_process_group
from lit_qsum.errors import UserInputError
from lit_qsum.module import SummarizationModule
from lit_qsum.profiles import PROFILES, apply_profile
from lit_qsum.writable import check_logger_dirs

# The module steps its optimizer itself (see lit_qsum.steps) and every checkpoint
# falls on a step boundary, so Lightning's note about "pre-optimization state" does not apply.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# main() hands LightningCLI the argv it rewrote (--profile), which Lightning warns about on every command
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
# SummarizationDataModule restores its sampler position itself (state_dict/load_state_dict, mark_consumed)
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
# SortedEvalBatchSampler returns every index once (tests/data check it), which Lightning can't see for itself
warnings.filterwarnings("ignore", message="You are using a custom batch sampler `SortedEvalBatchSampler`")


class _NoAdvertisements(logging.Filter):
    """Lightning advertises its cloud services on every fit ("💡 Tip: ... litlogger/litmodels"); not our users' concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


for _handler in logging.getLogger("lightning.pytorch").handlers:  # where rank_zero_info's lines are written
    _handler.addFilter(_NoAdvertisements())


def _data_tokenizer(tokenizer: str | None, model_name_or_path: str | None) -> str:
    return tokenizer or model_name_or_path or "lit_qsum:demo"


MAIN_HELP = (
    "Fine-tune dialogue summarizers with 4-bit QLoRA. Lightning's commands: fit, validate, test, predict "
    "(lit-qsum fit --help). lit-qsum's own: env (what this machine supports and which backend a config would get), "
    "export (a checkpoint to a transformers or peft folder), sweep (compare LoRA ranks); each takes --help."
)


# argparse's usage would list all ~110 flags of fit before a word of description; the flags follow below anyway
SUBCOMMAND_USAGE = "lit-qsum {name} --config CONFIG.yaml [--profile auto|{profiles}] [--section.flag VALUE ...]"
SUBCOMMAND_HELP = (
    "--profile applies a GPU profile's memory knobs (batch size, accumulation, checkpointing, precision) on top of "
    "the configs; flags you type win over it. Common flags: --data.train_path, --data.val_path, "
    "--model.model_name_or_path, --model.lora.rank, --model.lora.alpha, --data.batch_size, --trainer.max_epochs, "
    "--model.generation.num_beams."
)
# Settings classes document their fields in attribute docstrings (lit_qsum/settings.py); show them in --help
try:
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
except (ImportError, TypeError):  # jsonargparse releases before set_parsing_settings took this option
    from jsonargparse import set_docstring_parse_options

    set_docstring_parse_options(attribute_docstrings=True)


class _Parser(LightningArgumentParser):
    """jsonargparse prints the whole usage (~100 lines for ``fit``) above a parse error; here the error alone."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error or os.environ.get("LIT_QSUM_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        print(f"lit-qsum: error: {message.strip()}{_did_you_mean(message, parser)}\n(`{prog} --help` lists every flag)",
              file=sys.stderr)
        sys.exit(2)


def _did_you_mean(message: str, parser: Any) -> str:
    """`` (did you mean --model.lora.rank?)`` for a mistyped flag of an "unrecognized arguments" error."""
    if "unrecognized arguments" not in message:
        return ""
    known = compat.option_strings(parser)
    for token in message.split():
        close = difflib.get_close_matches(token.split("=", 1)[0], known, n=1, cutoff=0.8) if token.startswith("--") else []
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


class LitQsumCLI(LightningCLI):
    """LightningCLI wired for summarization: tokenizer and task shared by model and data, adapter checkpoints."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.run_folder: runs.RunFolder | None = None  # where fit writes (see lit_qsum.runs)
        self._output_dir: Path | None = None  # the Trainer's default_root_dir: the run folder of fit or of the checkpoint
        self._config_to_save: Namespace | None = None
        try:
            super().__init__(
                SummarizationModule,
                SummarizationDataModule,
                save_config_callback=RunConfigSaver,
                save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
                parser_kwargs={
                    "description": MAIN_HELP,
                    **{name: {"usage": SUBCOMMAND_USAGE.format(name=name, profiles="|".join(PROFILES)),
                              "description": SUBCOMMAND_HELP} for name in LIGHTNING_COMMANDS},
                },
                parser_class=_Parser,
                trainer_defaults={"use_distributed_sampler": False, "default_root_dir": runs.DEFAULT_ROOT},
                args=args,
                run=run,
            )
        except BaseException:
            if self.run_folder is not None:  # a no-op where fit's own callback closed it
                self.run_folder.close(failed=True)
            raise
        if run and self.run_folder is not None:
            self.run_folder.close(failed=False)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Predictions CSV flags (``--predictions.output_path``) and the model → data links."""
        parser.add_lightning_class_args(SummaryCsvWriter, "predictions")
        parser.add_argument(
            "--run_name", type=Optional[str], default=None,  # noqa: UP045 (kept as --help prints it)
            help="fit: name of the new run's folder under --trainer.default_root_dir (default: the start time). "
                 "--ckpt_path last/best: the run to take the checkpoint from (default: the newest run).",
        )
        parser.link_arguments(("model.tokenizer", "model.model_name_or_path"), "data.tokenizer", compute_fn=_data_tokenizer)

    def _parse_ckpt_path(self) -> None:
        """Checkpoint settings for what the model *is*; the current config and flags for everything else.

        Lightning replaces the whole ``model`` section with the checkpoint's hyperparameters, so at predict time
        ``--model.generation.num_beams 1`` or ``--model.rouge_tokenizer char`` would be silently ignored. Only the
        settings that rebuild the checkpoint's model come from it (``MODEL_IDENTITY``); where the config says
        otherwise, one line says which value is used.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path:
            return
        if ckpt_path in runs.ALIASES:  # the newest run's (or --run_name's) last/best checkpoint, found here
            ckpt_path = self._resolve_run_alias(subcommand, ckpt_path)
        if Path(ckpt_path).is_dir():
            found = sorted(p.name for p in Path(ckpt_path).glob("*.ckpt"))
            raise UserInputError(f"--ckpt_path {ckpt_path} is a folder; give one checkpoint file in it"
                                 + (f" ({', '.join(found[:4])})" if found else ": it holds no .ckpt file"))
        if not Path(ckpt_path).is_file():
            if ckpt_path in CKPT_ALIASES or "://" in str(ckpt_path) or str(ckpt_path).startswith("registry"):
                return
            raise UserInputError(f"--ckpt_path {ckpt_path}: no such file")
        problem = runs.checkpoint_problem(Path(ckpt_path), resume=subcommand == "fit")
        if problem:  # an empty dict or a weights-only file would otherwise end in a traceback inside Lightning
            raise UserInputError(f"--ckpt_path {ckpt_path}: {problem}")
        ours = self.config[subcommand].model.clone()
        try:
            super()._parse_ckpt_path()
        except SystemExit:
            raise
        except Exception as err:  # torch.load's errors for a truncated file, a CSV, a pickle of something else
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UserInputError(
                f"--ckpt_path {ckpt_path}: not a readable Lightning checkpoint ({type(err).__name__}: {first})"
            ) from err
        merged = self.config[subcommand].model
        for key in ours.keys():
            top = key.split(".", 1)[0]
            if top not in MODEL_IDENTITY:
                merged[key] = ours[key]
        theirs = _leaves({key: _plain(merged.get(key)) for key in MODEL_IDENTITY})
        mine = _leaves({key: _plain(ours.get(key)) for key in MODEL_IDENTITY})
        for key in sorted(set(theirs) | set(mine)):
            if theirs.get(key) != mine.get(key):
                print(f"lit-qsum: --ckpt_path {ckpt_path}: using the checkpoint's --model.{key} {theirs.get(key)!r} "
                      f"(the config says {mine.get(key)!r})", file=sys.stderr)

    def _resolve_run_alias(self, subcommand: str, alias: str) -> str:
        config = self.config[subcommand]
        path = runs.resolve_alias(alias, runs.runs_root(config), config.get("run_name"), resume=subcommand == "fit")
        config.ckpt_path = str(path)
        if rank_zero_only.rank == 0:
            print(f"lit-qsum: --ckpt_path {alias}: {path}", file=sys.stderr)
        return str(path)

    def before_instantiate_classes(self) -> None:
        """Where the command writes: fit into a run folder of its own (locked), the others next to their checkpoint.

        validate/test/predict print their scores and write no logs (no empty ``version_N`` folder per call). fit's logs
        go to ``<run>/tensorboard`` without a version folder, so a resume continues its run's log.
        """
        subcommand = self.config.get("subcommand")
        # values Lightning or torch would reject only mid-run, with a traceback (lit_qsum.config_checks)
        check_settings(self.config[subcommand] if subcommand else self.config, subcommand)
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        if self.subcommand != "fit":
            config.trainer.logger = False
            run = runs.run_of_checkpoint(config.ckpt_path) if config.get("ckpt_path") else None
            if run is not None:
                runs.repair_if_idle(run)
                self._output_dir = run  # predictions.csv goes into the run it came from
            return
        self._config_to_save = config.clone()  # as given: re-running a saved config starts a new run
        rank = rank_zero_only.rank
        self.run_folder = runs.RunFolder.for_fit(runs.runs_root(config), config.get("run_name"), config.ckpt_path, rank)
        for line in self.run_folder.open("lit-qsum fit"):
            print(f"lit-qsum: {line}", file=sys.stderr)
        self._output_dir = self.run_folder.path
        resumed = self.run_folder.resume and config.ckpt_path
        purge_step = runs.first_log_step(Path(config.ckpt_path)) if resumed else None
        if rank == 0:
            shown = runs.shown(self.run_folder.path)
            print(f"lit-qsum: {'resuming run' if self.run_folder.resume else 'new run'} {shown}", file=sys.stderr)
        runs.place_loggers(config.trainer, self.run_folder.path, purge_step)

    def instantiate_classes(self) -> None:
        """Instantiate, then tell the data module which task (seq2seq or causal) the model is."""
        super().instantiate_classes()
        check_logger_dirs(self.trainer.loggers)
        if getattr(self.datamodule, "task", None) in (None, "auto"):
            self.datamodule.task = self.model.resolve_task()

    def before_predict(self) -> None:
        """Refuse a predict without ``--ckpt_path`` before the model loads (see ``SummaryCsvWriter.check_checkpoint``)."""
        for writer in (c for c in self.trainer.callbacks if isinstance(c, SummaryCsvWriter)):
            writer.check_checkpoint(self.config_init["predict"].get("ckpt_path"))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        """Add the atomic adapter-writing CheckpointIO, the progress bar and TensorBoard summaries, unless the config
        brings its own; point the Trainer and checkpoints without a ``dirpath`` at the run folder."""
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AdapterCheckpointIO())
        config["plugins"] = plugins
        configured = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, SummarizationProgressBar()]
        if not any(isinstance(c, TensorBoardSummaries) for c in configured):
            callbacks = [*callbacks, TensorBoardSummaries()]
        if self._output_dir is not None:
            config["default_root_dir"] = str(self._output_dir)
        if self.run_folder is not None:
            callbacks = [*callbacks, RunFolderKeeper(self.run_folder)]
        trainer = super()._instantiate_trainer(config, callbacks)
        if self.run_folder is not None:
            # realpath, as ModelCheckpoint stores its own: a resume compares them before it restores best_model_score
            checkpoints = os.path.realpath(self.run_folder.path / runs.CHECKPOINTS)
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                    callback.dirpath = checkpoints
        for callback in trainer.callbacks:
            if isinstance(callback, RunConfigSaver) and self._config_to_save is not None:
                callback.config = self._config_to_save
        return trainer


def _plain(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"rank": 8}}`` -> ``{"lora.rank": 8}``; ``model_config`` stays whole (one flag, one dict)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "model_config":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# the settings that rebuild a checkpoint's model: taken from the checkpoint by validate/test/predict and a resume
MODEL_IDENTITY = ("model_name_or_path", "model_config", "tokenizer", "backend", "lora", "quantization", "init_seed")
# --ckpt_path values Lightning resolves itself (lit-qsum resolves "last" and "best" first: lit_qsum.runs)
CKPT_ALIASES = ("last", "best", "hpc")

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# commands beside LightningCLI's fit/validate/test/predict: name -> (module, function taking the rest of argv)
EXTRA_COMMANDS = {
    "env": ("lit_qsum.env_report", "env_command"),
    "export": ("lit_qsum.export", "export_command"),
    "sweep": ("lit_qsum.sweep", "sweep_command"),
}


def check_config_files(argv: list[str]) -> None:
    """Name the file when a ``--config`` YAML is missing or malformed (jsonargparse only says "<unicode string>")."""
    for flag, value in zip(argv, argv[1:]):
        if flag not in ("--config", "-c") or not value.endswith((".yaml", ".yml")):
            continue
        read_config_file(value)


def check_command(argv: list[str]) -> None:
    """Name every command when the first word is none of them (jsonargparse would list Lightning's four only)."""
    if not argv or argv[0].startswith("-") or argv[0] in LIGHTNING_COMMANDS:
        return
    commands = [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]
    close = difflib.get_close_matches(argv[0], commands, n=1)
    raise UserInputError(f"{argv[0]!r} is not a lit-qsum command" + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; choose one of {', '.join(commands)} (`lit-qsum --help` says what each does)")


def _user_error(err: BaseException) -> BaseException | None:
    """The UserInputError behind ``err`` (jsonargparse wraps errors raised while it validates values), if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, UserInputError):
            return err
        seen = seen.__cause__ or seen.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Console-script entry point."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            module_name, function = EXTRA_COMMANDS[argv[0]]
            getattr(importlib.import_module(module_name), function)(argv[1:])  # imported only when used
            return
        check_command(argv)
        check_config_files(argv)
        argv, profile, applied, left_out = apply_profile(argv)
        if profile is not None:
            print(f"lit-qsum: profile {profile}: applied {', '.join(applied) or 'nothing'}"
                  + (f"; your flags win over its {', '.join(left_out)}" if left_out else ""), file=sys.stderr)
        LitQsumCLI(args=argv)
        close_process_group(finished=True)
    except (ValueError, MisconfigurationException) as err:
        # Lightning's MisconfigurationException is a setting this machine can't honour (e.g. a GPU on a CPU box)
        if (_user_error(err) is None and not isinstance(err, MisconfigurationException)) or os.environ.get("LIT_QSUM_DEBUG"):
            raise
        print(f"lit-qsum: error: {err}{_hint(err)}", file=sys.stderr)
        sys.exit(2)
    finally:
        close_process_group(finished=False)  # no-op when closed above or never opened


def _hint(err: BaseException) -> str:
    """How to fix the errors Lightning words for its own developers."""
    if "No supported gpu backend found" in str(err):
        return (
            " (--trainer.accelerator gpu, but this machine has no CUDA GPU that torch can use: check nvidia-smi and "
            "that torch is a CUDA build, or train on the CPU with --trainer.accelerator cpu --trainer.devices 1 "
            "--trainer.precision 32-true, e.g. configs/cpu.yaml)"
        )
    return ""

