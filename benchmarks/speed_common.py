"""What both halves of ``benchmarks/speed.py`` need: the driver (speed.py) and the worker (speed_worker.py).

Standard library only at import time, so the driver stays light; ``lit_module_kwargs`` imports lit-qsum when called.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

LORA = {"rank": 16, "alpha": 32, "dropout": 0.05}
LOSS_CHECK_SAMPLES = 16
# SummarizationModule arguments the harness sets itself: a variant changes how it trains, not what; steps are
# timed per loader batch, so accumulation stays 1
HARNESS_OWNED = frozenset({"model_name_or_path", "model_config", "tokenizer", "optimizer", "scheduler",
                           "accumulate_grad_batches"})
# the data module's defaults
DATA_DEFAULTS = {"pad_to_multiple_of": 8, "target_pad_to_multiple_of": None, "group_by_target": True}


def empty_record(spec: dict[str, Any]) -> dict[str, Any]:
    return {"shape": spec["shape"], "tool": spec["tool"], "variant": spec["variant"]["name"],
            "variant_config": {k: spec["variant"][k] for k in ("module", "data")}, "tokens_per_s": None,
            "peak_allocated_gib": None, "peak_reserved_gib": None, "gpu": None, "date": spec["date"],
            "step_time_s": None, "first_step_s": None, "mfu": None, "loss_check": None,
            "micro_batch": spec["micro_batch"], "timed_steps": spec["steps"], "timed_tokens": None,
            "non_pad_share": None, "gpu_time_per_token_us": None, "gpu_busy_share": None, "graph_captures": None,
            "graph_capture_s": None, "graph_replays": None,
            "num_params": spec["num_params"], "versions": None, "error": None}


def lit_module_kwargs(variant: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """SummarizationModule kwargs: the harness's LoRA and checkpointing settings, then the variant's.

    A dict given for a parameter annotated with a dataclass (``lora: LoraSettings | None``, any later
    settings group) becomes that dataclass, on top of the harness's value where it sets one, so new
    settings need no change here.
    """
    from lit_qsum.module import SummarizationModule  # noqa: PLC0415
    from lit_qsum.settings import LoraSettings  # noqa: PLC0415

    hints = typing.get_type_hints(SummarizationModule.__init__)
    params = set(inspect.signature(SummarizationModule.__init__).parameters) - {"self"}
    kwargs: dict[str, Any] = {"backend": "qlora", "lora": LoraSettings(**LORA), "gradient_checkpointing": True}
    for key, value in overrides.items():
        if key in HARNESS_OWNED:
            raise ValueError(f"--lit-variant {variant}: module.{key} is set by the harness")
        if key not in params:
            raise ValueError(f"--lit-variant {variant}: SummarizationModule has no argument {key!r}; "
                             f"known: {', '.join(sorted(params - HARNESS_OWNED))}")
        settings = _dataclass_in(hints.get(key))
        if settings is not None and isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(settings)}
            if unknown := set(value) - names:
                raise ValueError(f"--lit-variant {variant}: module.{key} has no field(s) {sorted(unknown)}; "
                                 f"{settings.__name__} fields: {', '.join(sorted(names))}")
            base = kwargs.get(key)
            value = dataclasses.replace(base, **value) if isinstance(base, settings) else settings(**value)
        kwargs[key] = value
    return kwargs


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in ``X``, ``X | None`` or ``Optional[X]``, else None."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return next((o for o in options if isinstance(o, type) and dataclasses.is_dataclass(o)), None)
