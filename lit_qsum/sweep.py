"""``lit-qsum sweep``: short fits of one config at several LoRA ranks, compared in one table.

    lit-qsum sweep --config configs/demo.yaml --ranks 4 8 16 32 64 --max_steps 150 -- --data.max_eval_samples 50

Flags after ``--`` go to every run. Rank R runs the config with ``--model.lora.rank R --model.lora.alpha 2R``:
LoRA scales its update by alpha / rank, so 2R keeps that scale at 2 and the runs differ in capacity, not in
effective learning rate (with ``use_rslora`` the scale is alpha / sqrt(rank) and grows with the rank). Each
run fits ``--max_steps`` optimizer steps (the LR schedule compressed into them), validates once at the end
and logs to TensorBoard under ``<default_root_dir>/sweep/rank-R/version_N`` with the ``config.yaml`` it ran;
``tensorboard --logdir <default_root_dir>/sweep`` shows the ranks side by side. Nothing is checkpointed (the
config's ModelCheckpoints are dropped): a sweep measures, and must not overwrite the adapters of real runs.
All runs share one process and one seed, so they differ only by rank. A run that runs out of memory is
recorded as such and the sweep goes on. ``sweep.csv`` and ``sweep.md`` (the table and the best rank by
``--metric``) are written beside the rank folders after every run, so an interrupted sweep keeps its rows.
Peak memory is CUDA ``max_memory_allocated`` on a GPU, else the process's peak RSS during the run.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import re
import resource
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from jsonargparse import Namespace
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.memory import garbage_collection_cuda, is_oom_error

from lit_qsum.atomic_io import atomic_file
from lit_qsum.cli import LitQsumCLI, check_config_files
from lit_qsum.errors import UserInputError
from lit_qsum.profiles import expand_profile_flag

METRICS = ("val/rouge1", "val/rouge2", "val/rougeL", "val/rouge_sum", "val/loss")
LOWER_IS_BETTER = ("val/loss",)
# set per run by the sweep; given after ``--`` they would silently lose, so they are refused
SWEEP_FLAGS = ("--model.lora.rank", "--model.lora.alpha", "--trainer.max_steps", "--trainer.max_epochs",
               "--trainer.val_check_interval", "--trainer.check_val_every_n_epoch", "--trainer.logger",
               "--trainer.enable_checkpointing")
_MIB = 2**20

# each run gets its flags as ``args`` while sys.argv holds the sweep's own: intended, not the mistake warned about
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


@dataclass
class RankResult:
    """What one run measured; ``error`` is set instead of metrics when it ran out of memory."""

    rank: int
    trainable_params: int = 0
    peak_memory_mib: float = math.nan
    start_memory_mib: float = math.nan
    memory_measure: str = ""
    fit_s: float = math.nan
    wall_s: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    log_dir: str = ""
    error: str = ""


class _SweepRunCLI(LitQsumCLI):
    """The user's config for one sweep run: sweep logger, validation at the last step, no checkpoints."""

    def __init__(self, args: list[str], rank: int) -> None:
        self.rank = rank
        super().__init__(args=args, run=False)

    def before_instantiate_classes(self) -> None:
        config = self.config
        if config.model.backend == "full":
            raise UserInputError("--model.backend full trains no LoRA adapter: the sweep needs lora, qlora, unsloth or auto")
        if config.seed_everything is False:  # the runs must share one seed to differ only by rank
            config.seed_everything = seed_everything(workers=True)
        trainer = config.trainer
        self.sweep_dir = Path(trainer.default_root_dir or os.getcwd()) / "sweep"
        # the module counts optimizer steps, the Trainer's val_check_interval loader batches
        trainer.val_check_interval = trainer.max_steps * config.model.accumulate_grad_batches
        trainer.check_val_every_n_epoch = None
        trainer.max_epochs = None  # max_steps alone ends the run, however short an epoch is
        trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            # no placeholder hp_metric: the HPARAMS tab compares ranks by what the module logs there
            init_args=Namespace(save_dir=str(self.sweep_dir), name=f"rank-{self.rank}", default_hp_metric=False),
        )
        trainer.callbacks = [cb for cb in trainer.callbacks or [] if not _is_checkpoint(cb.class_path)]
        trainer.enable_checkpointing = False


def _is_checkpoint(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return isinstance(cls, type) and issubclass(cls, ModelCheckpoint)


class PeakMemory:
    """Peak memory of one run: CUDA ``max_memory_allocated`` on a GPU, else the host's peak RSS.

    On Linux the kernel's RSS high-water mark (``VmHWM``) is reset before each run (``/proc/self/clear_refs``),
    so it is that run's peak. Elsewhere ``ru_maxrss`` can't be reset: a run that stays below an earlier
    run's peak reports that peak. Host RSS counts the whole process (Python, torch, data), not just the run.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.resettable = not self.cuda and _reset_host_peak()
        if self.cuda:
            self.measure = "CUDA max_memory_allocated"
        elif self.resettable:
            self.measure = "host peak RSS (VmHWM, reset per run)"
        else:
            self.measure = "host peak RSS (ru_maxrss, process lifetime)"

    def start(self) -> int:
        """Reset the peak; returns the memory in use now, in bytes."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        if self.resettable:
            _reset_host_peak()
        return psutil.Process().memory_info().rss

    def peak_bytes(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def _reset_host_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
        return "VmHWM" in Path("/proc/self/status").read_text()
    except OSError:
        return False


class _SweepArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one ``lit-qsum: error`` line from cli.main, like every other mistake
        raise UserInputError(message)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags, and the lit-qsum flags after ``--`` that every run gets."""
    split = argv.index("--") if "--" in argv else len(argv)
    own, extra = argv[:split], argv[split + 1 :]
    parser = _SweepArgumentParser(prog="lit-qsum sweep", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the lit-qsum YAML every run starts from")
    parser.add_argument("--ranks", required=True, nargs="+", metavar="R", help="LoRA ranks to try; alpha is 2x the rank")
    parser.add_argument("--max_steps", default="150", help="optimizer steps per run (default 150)")
    parser.add_argument("--metric", default="val/rougeL", choices=METRICS, help="picks the best rank (default val/rougeL)")
    ns = parser.parse_args(own)
    ns.ranks = _positive_ints("--ranks", ns.ranks)
    if len(set(ns.ranks)) != len(ns.ranks):
        raise UserInputError(f"--ranks must not repeat a rank, got {' '.join(map(str, ns.ranks))}")
    ns.max_steps = _positive_ints("--max_steps", [ns.max_steps])[0]
    for flag in extra:
        name = flag.split("=")[0].removesuffix("+")
        if any(name == f or name.startswith(f + ".") for f in SWEEP_FLAGS):
            raise UserInputError(f"{name} is set by the sweep for each run; drop it after --")
    check_config_files(["--config", ns.config, *extra])
    ns.command = shlex.join(["lit-qsum", "sweep", *argv])
    return ns, extra


def _positive_ints(flag: str, values: list[str]) -> list[int]:
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = []
    if not numbers or any(n <= 0 for n in numbers):
        raise UserInputError(f"{flag} takes positive integers, got {' '.join(values)}")
    return numbers


def sweep_command(argv: list[str]) -> None:
    """Run ``lit-qsum sweep``: one short fit per rank, then the table and the best rank."""
    ns, extra = parse_args(argv)
    extra, _ = expand_profile_flag(extra)
    results: list[RankResult] = []
    seed: int | None = None
    for i, rank in enumerate(ns.ranks, 1):
        args = ["--config", ns.config, *extra, "--model.lora.rank", str(rank), "--model.lora.alpha", str(2 * rank),
                "--trainer.max_steps", str(ns.max_steps)]
        if seed is not None:
            args += ["--seed_everything", str(seed)]
        result, seed, sweep_dir = run_rank(args, rank, f"[{i}/{len(ns.ranks)}]")
        results.append(result)
        write_results(sweep_dir, results, ns)
    print(format_table(results, ns.metric), flush=True)
    print(f"wrote {sweep_dir / 'sweep.csv'} and {sweep_dir / 'sweep.md'}", flush=True)


def run_rank(args: list[str], rank: int, tag: str) -> tuple[RankResult, int, Path]:
    """One short fit; returns what it measured, its seed (for the next runs) and the sweep folder."""
    started = time.perf_counter()
    cli = _SweepRunCLI(args, rank)
    trainer, model = cli.trainer, cli.model
    if trainer.world_size > 1:
        raise UserInputError(f"--trainer.devices: the sweep runs its ranks in one process, on one device "
                             f"(got {trainer.world_size})")
    seed, sweep_dir = cli.config.seed_everything, cli.sweep_dir
    timer = Timer(verbose=False)
    trainer.callbacks.append(timer)
    result = RankResult(rank=rank, log_dir=str(trainer.log_dir))
    print(f"lit-qsum sweep {tag}: rank {rank} (alpha {2 * rank}), {trainer.max_steps} steps -> {trainer.log_dir}",
          file=sys.stderr, flush=True)
    memory = PeakMemory(trainer.strategy.root_device)
    result.memory_measure = memory.measure
    result.start_memory_mib = memory.start() / _MIB
    seed_everything(seed, workers=True)
    try:
        trainer.fit(model, datamodule=cli.datamodule)
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError included
        if not is_oom_error(err):
            raise
        result.error = "out of memory"  # a rank too large for the card is a result, not the end of the sweep
    result.peak_memory_mib = memory.peak_bytes() / _MIB
    result.fit_s = timer.time_elapsed("train")
    result.wall_s = time.perf_counter() - started
    result.trainable_params = int(model.run_facts.get("trainable_params", 0))
    if not result.error:
        found = trainer.callback_metrics
        result.metrics = {name: float(found[name]) for name in METRICS if name in found}
    del cli, trainer, model, timer
    garbage_collection_cuda()  # gc.collect + torch.cuda.empty_cache: the next rank starts from a clean card
    summary = result.error or ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) or "no validation metrics"
    print(f"lit-qsum sweep {tag}: rank {rank} done in {result.wall_s:.1f} s, {result.trainable_params:,} trainable, "
          f"peak {result.peak_memory_mib:,.0f} MiB: {summary}", file=sys.stderr, flush=True)
    return result, seed, sweep_dir


def best_rank(results: list[RankResult], metric: str) -> RankResult | None:
    """The run with the best ``metric`` (lowest for a loss, else highest); ties go to the smaller rank."""
    scored = [r for r in results if math.isfinite(r.metrics.get(metric, math.nan))]
    if not scored:
        return None
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(scored, key=lambda r: (sign * r.metrics[metric], r.rank))


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(results: list[RankResult], metric: str) -> str:
    """The Markdown table (also readable in a terminal) and the best-rank line."""
    lines = [
        "| rank | alpha | trainable params | peak memory (MiB) | fit time (s) "
        "| ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE sum | val loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        scores = [r.error] * 5 if r.error else [_cell(r.metrics.get(name), ".4f") for name in METRICS]
        cells = [str(r.rank), str(2 * r.rank), f"{r.trainable_params:,}", _cell(r.peak_memory_mib, ",.0f"),
                 _cell(r.fit_s, ".1f"), *scores]
        lines.append("| " + " | ".join(cells) + " |")
    best = best_rank(results, metric)
    verdict = f"best rank by {metric}: {best.rank} ({best.metrics[metric]:.4f})" if best else f"no run reported {metric}"
    scored = {r.metrics[metric] for r in results if math.isfinite(r.metrics.get(metric, math.nan))}
    if best and len(scored) == 1 and len(results) > 1:
        verdict += " - every rank tied, so this is only the smallest; train longer (--max_steps) to tell them apart"
    memory = " / ".join(dict.fromkeys(r.memory_measure for r in results))
    notes = f"peak memory: {memory}; fit time: training steps and the final validation, not model building"
    return "\n".join([*lines, "", verdict, notes])


def write_results(sweep_dir: Path, results: list[RankResult], ns: argparse.Namespace) -> None:
    """``sweep.csv`` (one row per rank) and ``sweep.md`` (the table), each replaced atomically."""
    header = ["rank", "alpha", "trainable_params", "peak_memory_mib", "start_memory_mib", "memory_measure", "fit_s", "wall_s",
              *METRICS, "error", "log_dir"]
    with atomic_file(sweep_dir / "sweep.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in results:
            scores = [_cell(r.metrics.get(name), ".6f") for name in METRICS]
            writer.writerow([r.rank, 2 * r.rank, r.trainable_params, f"{r.peak_memory_mib:.1f}",
                             f"{r.start_memory_mib:.1f}", r.memory_measure,
                             f"{r.fit_s:.2f}", f"{r.wall_s:.2f}", *scores, r.error, r.log_dir])
    text = (f"# LoRA rank sweep\n\n`{ns.command}`\n\nalpha = 2 x rank; {ns.max_steps} steps per run; "
            f"{len(results)} of {len(ns.ranks)} runs done\n\n"
            f"{format_table(results, ns.metric)}\n")
    with atomic_file(sweep_dir / "sweep.md", "w", encoding="utf-8") as handle:
        handle.write(text)
