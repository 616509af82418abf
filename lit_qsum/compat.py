"""Every use of another library's private API, in one place, each with a test (``tests/test_compat.py``).

lit-qsum needs a few things its libraries have no public API for. Each is wrapped here under a name that says what
it does; the rest of the package calls these functions and never reaches into a private attribute itself. When a
library release moves one of them, its test here fails first and names the function to fix. ``pyproject.toml``
bounds ``lightning`` to the minor versions these tests have run on.

| function | library internal | used by |
|---|---|---|
| ``parse_ckpt_path_hook`` | ``LightningCLI._parse_ckpt_path`` (overridden) | ``lit_qsum.cli`` |
| ``option_strings`` | ``argparse.ArgumentParser._actions`` | ``lit_qsum.cli`` |
| ``reset_train_and_val_loaders`` | ``lightning.pytorch.tuner.batch_size_scaling._reset_dataloaders`` | batch-size finder |
| ``set_running_epoch_length`` | ``_FitLoop._combined_loader``, ``_FitLoop._data_fetcher`` | OOM batch-size scaler |
| ``write_tensorboard_hparams`` | ``TensorBoardLogger._sanitize_params``, ``SummaryWriter._get_file_writer``, ``lightning.fabric.utilities.logger._convert_params`` / ``_flatten_dict`` | TensorBoard HPARAMS |
| ``lora_layer_runs_one_adapter`` | peft ``LoraLayer._disable_adapters``, ``._active_adapter`` | fused LoRA layers |
| ``sdpa_mask_skip_helpers`` | transformers ``masking_utils._ignore_bidirectional_mask_sdpa`` / ``_ignore_causal_mask_sdpa`` | CUDA graphs |
| ``no_split_module_classes`` | transformers ``PreTrainedModel._no_split_modules`` | FSDP wrapping, compiled blocks |
| ``keep_in_fp32_module_names`` | transformers ``PreTrainedModel._keep_in_fp32_modules`` | ``fp32_modules_in_bf16`` |
| ``compile_module_call`` | torch ``nn.Module._call_impl`` / ``_compiled_call_impl`` | compiled blocks |
| ``foreach_copy`` | ``torch._foreach_copy_`` | DDP gradient sync |
| ``quantize_4bit_on`` | bitsandbytes ``Params4bit._quantize`` (replaced while loading) | FSDP's ``load_on_cpu`` |
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

import torch

PARSE_CKPT_PATH_HOOK = "_parse_ckpt_path"
"""The LightningCLI method that loads ``--ckpt_path``'s hyperparameters into the config (overridden by lit-qsum's CLI;
the name only, so that a rename shows up in ``tests/test_compat.py``)."""


def parse_ckpt_path_hook(cli_class: type) -> Callable[..., Any]:
    """LightningCLI's ``_parse_ckpt_path`` of ``cli_class``'s parent chain (raises AttributeError if Lightning renamed it)."""
    return getattr(cli_class, PARSE_CKPT_PATH_HOOK)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag ``parser`` knows (argparse keeps them in the private ``_actions``; there is no public list)."""
    return [flag for action in parser._actions for flag in action.option_strings]


def reset_train_and_val_loaders(trainer: Any) -> None:
    """Make the fit loop rebuild its train and val loaders (what Lightning's own batch-size finder calls)."""
    from lightning.pytorch.tuner.batch_size_scaling import _reset_dataloaders  # noqa: PLC0415

    _reset_dataloaders(trainer)


def set_running_epoch_length(loop: Any, num_batches: int) -> None:
    """Change the length of the epoch the fit loop is running: its CombinedLoader's limit (re-read at the next epoch's
    start) and its data fetcher's length (which ends the current epoch). Lightning has no public way to do this."""
    loop.max_batches = num_batches
    combined = loop._combined_loader
    if combined is not None:
        combined.limits = [num_batches] * len(combined.flattened)
    fetcher = loop._data_fetcher
    if fetcher is not None and fetcher.length is not None:
        fetcher.length = num_batches
        fetcher.done = fetcher.fetched >= num_batches


def write_tensorboard_hparams(logger: Any, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """Write TensorBoard's HPARAMS session for ``params`` against ``metrics`` already logged as scalars.

    ``TensorBoardLogger.log_hyperparams(params, metrics)`` would log every metric a second time; this writes the
    HPARAMS summaries only, with the flattening and sanitising Lightning applies.
    """
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict  # noqa: PLC0415
    from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415

    flat = logger._sanitize_params(_flatten_dict(_convert_params(params)))
    writer = logger.experiment._get_file_writer()
    for summary in hparams(flat, metrics):
        writer.add_summary(summary, step)


def lora_layer_runs_one_adapter(layer: Any, adapter: str) -> bool:
    """True when peft's LoRA ``layer`` would run exactly ``adapter``, unmerged: adapters enabled, that one active."""
    return not (layer._disable_adapters or layer.merged_adapters or layer._active_adapter not in (adapter, [adapter]))


SDPA_MASK_SKIP_HELPERS = ("_ignore_bidirectional_mask_sdpa", "_ignore_causal_mask_sdpa")


def sdpa_mask_skip_helpers() -> tuple[ModuleType | None, list[str]]:
    """transformers' module of mask helpers and the names of those that read the padding mask on the host to decide
    whether an SDPA mask may be skipped (``(None, [])`` where transformers has no ``masking_utils``)."""
    try:
        from transformers import masking_utils  # noqa: PLC0415
    except ImportError:
        return None, []
    return masking_utils, [name for name in SDPA_MASK_SKIP_HELPERS if hasattr(masking_utils, name)]


def no_split_module_classes(modules: Iterable[torch.nn.Module]) -> set[str]:
    """Class names of the transformer blocks models list in ``_no_split_modules`` (what FSDP must not split)."""
    return _declared_names(modules, "_no_split_modules")


def keep_in_fp32_module_names(modules: Iterable[torch.nn.Module]) -> set[str]:
    """Layer names models keep in float32 when loaded in another dtype (``_keep_in_fp32_modules``; T5: ``wo``)."""
    return _declared_names(modules, "_keep_in_fp32_modules")


def _declared_names(modules: Iterable[torch.nn.Module], attribute: str) -> set[str]:
    names: set[str] = set()
    for module in modules:
        names.update(getattr(module, attribute, None) or ())
    return names


def foreach_copy(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``d.copy_(s)`` for each pair, as one multi-tensor kernel where the device has one."""
    torch._foreach_copy_(destinations, sources)


def compile_module_call(module: torch.nn.Module, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Route ``module(...)`` through ``wrap(module's own call)`` (what ``nn.Module.compile`` does); False if done before."""
    if "_compiled_call_impl" in module.__dict__:
        return False
    module._compiled_call_impl = wrap(module._call_impl)
    return True


@contextlib.contextmanager
def quantize_4bit_on(device: torch.device) -> Iterator[None]:
    """While a model loads into host memory, bitsandbytes quantizes each weight on ``device`` and keeps the 4-bit
    result (and its quant state) on the host.

    Quantizing on the GPU gives the same 4-bit base as loading there: bitsandbytes' CPU kernels round some weights and
    block scales differently (session 12: a base quantized on the host differed from the GPU one), and take about a
    minute for t5-xl. The GPU holds one weight at a time. Weights a checkpoint stores already quantized never pass
    here.
    """
    import bitsandbytes as bnb  # noqa: PLC0415 (only the QLoRA path needs it)

    params = bnb.nn.Params4bit
    original = params._quantize

    def quantize(self: bnb.nn.Params4bit, target: torch.device | str | int) -> bnb.nn.Params4bit:
        target = torch.device(target)
        if target.type != "cpu":
            return original(self, target)
        original(self, device)
        self.data = self.data.to(target)
        self.quant_state.to(target)  # in place: the module's reference to it follows
        return self

    params._quantize = quantize
    try:
        yield
    finally:
        params._quantize = original
