"""Checks of parsed CLI values that the libraries would only trip over mid-run, with a traceback.

Each runs on the parsed config before anything is built, so a bad value ends in one ``lit-qsum: error:``
line naming the flag: ``--trainer.val_check_interval 0`` is a ZeroDivisionError in Lightning's fit loop
after the model has loaded, and a negative or NaN learning rate a ValueError from the optimizer's
constructor.
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any

import yaml

from lit_qsum.errors import UserInputError


def read_config_file(value: str) -> dict[str, Any]:
    """The mapping a ``--config`` YAML holds.

    Raises:
        UserInputError: naming the file when it is missing, unreadable, not UTF-8, not YAML, empty, or not a mapping.
    """
    path = Path(value)
    if not path.is_file():
        raise UserInputError(f"--config {value}: no such file")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserInputError(f"--config {value} is not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise UserInputError(f"--config {value} is not UTF-8 text: {err}") from err
    except OSError as err:
        raise UserInputError(f"--config {value}: can't read the file ({err.strerror or err})") from err
    if content is None:
        raise UserInputError(f"--config {value} is empty; a config maps sections (trainer:, model:, data:) to settings")
    if not isinstance(content, dict):
        raise UserInputError(f"--config {value} holds a {type(content).__name__}, not a mapping of sections "
                             "(trainer:, model:, data:) to settings")
    return content


def check_val_check_interval(value: Any) -> None:
    """``--trainer.val_check_interval``: an int >= 1 (batches), a float in (0, 1] (of an epoch), or a duration."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return  # None, a duration string or dict: Lightning checks those itself
    if isinstance(value, int) and value < 1:
        raise UserInputError(f"--trainer.val_check_interval must be >= 1 training batches (or a fraction in (0, 1] "
                             f"of an epoch), got {value}; --trainer.limit_val_batches 0 turns validation off")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise UserInputError(f"--trainer.val_check_interval as a fraction of an epoch must be in (0, 1], got {value}")


def check_learning_rates(model: Any) -> None:
    """``init_args.lr`` of ``--model.optimizer`` and ``--model.scheduler`` (where it has one): finite and > 0."""
    for group in ("optimizer", "scheduler"):
        init_args = _get(_get(model, group), "init_args")
        lr = _get(init_args, "lr")
        if lr is None or isinstance(lr, bool) or not isinstance(lr, Real):
            continue
        if not math.isfinite(lr) or lr <= 0:
            raise UserInputError(f"--model.{group}.init_args.lr must be a positive number, got {lr}")


def check_rouge_packages(model: Any, subcommand: str | None) -> None:
    """``--model.rouge_tokenizer morpheme`` needs the ``ko`` extra where the command scores (not predict); said
    before a run folder is made or weights load."""
    from lit_qsum.metrics.tokenizers import check_tokenizer  # noqa: PLC0415

    tokenizer = _get(model, "rouge_tokenizer")
    if tokenizer is not None and subcommand != "predict":
        check_tokenizer(tokenizer)


def check_settings(config: Any, subcommand: str | None = None) -> None:
    """Every check above on one subcommand's parsed config (``cli.config[subcommand]``)."""
    check_val_check_interval(_get(_get(config, "trainer"), "val_check_interval"))
    check_learning_rates(_get(config, "model"))
    check_rouge_packages(_get(config, "model"), subcommand)


def _get(node: Any, key: str) -> Any:
    """``node[key]`` for jsonargparse Namespaces and dicts alike; None where it is absent."""
    if node is None:
        return None
    if isinstance(node, dict):
        return node.get(key)
    return getattr(node, key, None)
