"""Turns ``Record``s into token-id features for the collators, counting what truncation cut.

Seq2seq: ``input_ids`` = the dialogue (≤ ``encoder_max_len`` tokens with the tokenizer's own special
tokens), ``labels`` = the first reference (≤ ``decoder_max_len``). Further references are kept on
the records for metrics only.

Causal: the template is split at ``{dialogue}`` and its parts are tokenized separately, so
truncation only ever shortens the dialogue: the instruction and the ``Summary:`` cue survive.
``prompt_ids`` = [bos if the tokenizer adds one] + prefix + dialogue + suffix (≤ ``encoder_max_len``),
``target_ids`` = summary + eos (≤ ``decoder_max_len``), so a training row is at most
``encoder_max_len + decoder_max_len`` tokens. Training and generation use the same function, so
the small boundary effects of tokenizing parts separately are learned consistently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from lit_qsum.data.formats import Record
from lit_qsum.errors import UserInputError


@dataclass
class TruncationStats:
    """How many dialogues (prompts) and summaries (targets) of a split were cut to fit."""

    source: str
    examples: int
    dialogues_truncated: int
    summaries_truncated: int
    encoder_max_len: int
    decoder_max_len: int

    def message(self, split: str) -> str:
        """One line for the log, e.g. ``train (train.csv): 12 of 2000 dialogues truncated to 512 tokens, ...``."""
        return (
            f"{split} ({self.source}): {self.dialogues_truncated} of {self.examples} dialogues truncated to "
            f"{self.encoder_max_len} tokens, {self.summaries_truncated} summaries to {self.decoder_max_len}"
        )


def _ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def _with_specials(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int, target: bool
) -> tuple[list[list[int]], int]:
    """Tokenizes with the tokenizer's special tokens, truncating to ``max_len``; returns (ids, #truncated)."""
    key = "text_target" if target else "text"
    ids = tokenizer(**{key: list(texts)}, verbose=False)["input_ids"]
    long = [i for i, row in enumerate(ids) if len(row) > max_len]
    if long:
        # Re-tokenize only the long ones so the tokenizer puts its special tokens back after cutting.
        cut = tokenizer(**{key: [texts[i] for i in long]}, truncation=True, max_length=max_len)["input_ids"]
        for i, row in zip(long, cut):
            ids[i] = row
    return ids, len(long)


def seq2seq_features(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    encoder_max_len: int,
    decoder_max_len: int,
    with_labels: bool,
    source: str,
) -> tuple[list[dict[str, Any]], TruncationStats]:
    """Features with ``input_ids``, ``index`` and, if ``with_labels``, ``labels``."""
    inputs, cut_inputs = _with_specials(tokenizer, [r.dialogue for r in records], encoder_max_len, target=False)
    features: list[dict[str, Any]] = [{"input_ids": ids, "index": i} for i, ids in enumerate(inputs)]
    cut_labels = 0
    if with_labels:
        labels, cut_labels = _with_specials(tokenizer, [r.references[0] for r in records], decoder_max_len, target=True)
        for feature, ids in zip(features, labels):
            feature["labels"] = ids
    stats = TruncationStats(source, len(records), cut_inputs, cut_labels, encoder_max_len, decoder_max_len)
    return features, stats


def prompt_parts(tokenizer: PreTrainedTokenizerBase, template: str) -> tuple[list[int], list[int]]:
    """Token ids before and after ``{dialogue}`` in ``template``, with bos first if the tokenizer adds one."""
    prefix, suffix = template.split("{dialogue}")
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and tokenizer("x")["input_ids"][:1] == [bos_id]
    bos = [bos_id] if adds_bos else []
    before, after = _ids(tokenizer, [prefix, suffix])
    return bos + before, after


def causal_features(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    encoder_max_len: int,
    decoder_max_len: int,
    with_labels: bool,
    source: str,
) -> tuple[list[dict[str, Any]], TruncationStats]:
    """Features with ``prompt_ids``, ``index`` and, if ``with_labels``, ``target_ids`` ending in eos."""
    before, after = prompt_parts(tokenizer, template)
    budget = encoder_max_len - len(before) - len(after)
    if budget < 1:
        raise UserInputError(
            f"--data.encoder_max_len ({encoder_max_len}) leaves no room for the dialogue: --data.prompt_template "
            f"alone takes {len(before) + len(after)} tokens"
        )
    dialogues = _ids(tokenizer, [r.dialogue for r in records])
    features: list[dict[str, Any]] = [
        {"prompt_ids": before + ids[:budget] + after, "index": i} for i, ids in enumerate(dialogues)
    ]
    cut_prompts = sum(len(ids) > budget for ids in dialogues)
    cut_targets = 0
    if with_labels:
        if tokenizer.eos_token_id is None:
            raise UserInputError("--data.task causal needs a tokenizer with an eos token to end targets")
        targets = _ids(tokenizer, [r.references[0] for r in records])
        cut_targets = sum(len(ids) > decoder_max_len - 1 for ids in targets)
        for feature, ids in zip(features, targets):
            feature["target_ids"] = ids[: decoder_max_len - 1] + [tokenizer.eos_token_id]
    stats = TruncationStats(source, len(records), cut_prompts, cut_targets, encoder_max_len, decoder_max_len)
    return features, stats


def feature_length(feature: dict[str, Any]) -> int:
    """Tokens a feature puts in a batch; the samplers group by it."""
    keys = ("input_ids", "labels", "prompt_ids", "target_ids")
    return sum(len(feature[key]) for key in keys if key in feature)


def feature_parts(feature: dict[str, Any]) -> tuple[int, ...]:
    """The lengths a collator pads separately: (source, target) for seq2seq, the whole row for decoder-only."""
    if "input_ids" in feature and "labels" in feature:
        return len(feature["input_ids"]), len(feature["labels"])
    return (feature_length(feature),)
