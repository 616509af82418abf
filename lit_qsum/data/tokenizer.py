"""Resolves ``--model.tokenizer`` / ``--data.tokenizer`` specs to a tokenizer with a pad token."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_qsum.data.demo_tokenizer import build_demo_tokenizer_json, wrap_tokenizer_json
from lit_qsum.errors import UserInputError

DEMO_SPEC = "lit_qsum:demo"
# "name" or "owner/name" as the Hugging Face hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_FIX = (
    f"Use '{DEMO_SPEC}' for the offline demo tokenizer, a local directory with tokenizer.json or "
    "tokenizer_config.json (as written by save_pretrained), or a hub id such as 'google/flan-t5-small' "
    "that is in the local Hugging Face cache or reachable."
)


@functools.cache
def _demo_json() -> str:
    # Training takes a fraction of a second but happens once per process; each caller still gets its
    # own wrapper so that one caller's padding_side change cannot leak into another's.
    return build_demo_tokenizer_json()


def is_plausible_hub_id(spec: str) -> bool:
    """Whether ``spec`` is shaped like a hub repository id (``t5-small``, ``google/flan-t5-small``)."""
    return bool(_HUB_ID.match(spec)) and ".." not in spec and not spec.endswith((".", "-"))


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Loads ``lit_qsum:demo``, a local directory or a hub id; guarantees ``pad_token_id`` is set."""
    if spec == DEMO_SPEC:
        tokenizer: PreTrainedTokenizerBase = wrap_tokenizer_json(_demo_json())
    else:
        if not Path(spec).exists() and not is_plausible_hub_id(spec):
            raise UserInputError(
                f"--model.tokenizer {spec!r} is neither an existing path nor a Hugging Face hub id. {_FIX}"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except Exception as err:  # noqa: BLE001 - hub, IO and format errors all mean "cannot use this spec"
            raise UserInputError(
                f"--model.tokenizer {spec!r} could not be loaded ({type(err).__name__}: {err}). {_FIX}"
            ) from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UserInputError(
                f"--model.tokenizer {spec!r} has neither a pad nor an eos token; add one with "
                "tokenizer.add_special_tokens({'pad_token': ...}) and save it to a directory to load from."
            )
        # Decoder-only tokenizers (Llama, Mistral) ship without a pad token. Padding positions are
        # masked by length in the collators, so reusing eos is safe: eos in targets is still learned.
        tokenizer.pad_token = tokenizer.eos_token
        rank_zero_info(f"{spec}: no pad token; using eos {tokenizer.eos_token!r} for padding")
    return tokenizer
