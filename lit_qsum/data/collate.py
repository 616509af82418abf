"""Pads tokenized features into tensors for seq2seq (T5/BART) and decoder-only (Llama-style) models.

Padding positions are found from sequence lengths, never by comparing with ``pad_token_id``: a
decoder-only tokenizer may reuse eos as pad, and the eos that ends a target must stay a label.
Lengths are rounded up to ``pad_to_multiple_of`` (8 suits tensor cores and keeps the number of
distinct shapes, hence recompilations and allocator fragmentation, small).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lit_qsum.data.formats import Record

IGNORE_INDEX = -100  # what torch's cross-entropy skips


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _check(pad_token_id: int, pad_to_multiple_of: int) -> None:
    if pad_token_id < 0:
        raise ValueError(f"pad_token_id must be >= 0, got {pad_token_id}")
    if pad_to_multiple_of < 1:
        raise ValueError(f"--data.pad_to_multiple_of must be > 0, got {pad_to_multiple_of}")


def pad(sequences: Sequence[Sequence[int]], value: int, multiple: int, left: bool = False) -> tuple[Tensor, Tensor]:
    """Pads to ``[B, L]`` with ``L`` the longest length rounded up to ``multiple``; returns (ids, mask)."""
    width = round_up(max((len(s) for s in sequences), default=0), multiple)
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not seq:
            continue
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def count_tokens(batch: dict[str, Any]) -> Tensor:
    """The non-pad tokens a batch trains on (``num_tokens``, what throughput counts), as a device-side tensor.

    Seq2seq: input tokens plus label tokens. Causal (a batch with ``prompt_input_ids``): the prompt + summary rows,
    or the prompts alone when the batch has no rows (predict).
    """
    if "prompt_input_ids" in batch:
        mask = batch["attention_mask"] if "attention_mask" in batch else batch["prompt_attention_mask"]
        return mask.sum()
    tokens = batch["attention_mask"].sum()
    if "labels" in batch:
        tokens = tokens + (batch["labels"] != IGNORE_INDEX).sum()
    return tokens


class Seq2SeqCollator:
    """Right-pads ``input_ids`` and ``labels`` (-100 on padding); ``labels`` may be absent (predict).

    ``target_pad_to_multiple_of``: the labels' multiple (None: ``pad_to_multiple_of``); summaries are short, so a
    smaller multiple pads them less, at the cost of more distinct batch shapes.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, target_pad_to_multiple_of: int | None = None) -> None:
        _check(pad_token_id, pad_to_multiple_of)
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.target_multiple = _target_multiple(pad_to_multiple_of, target_pad_to_multiple_of)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        input_ids, attention_mask = pad([f["input_ids"] for f in features], self.pad_token_id, self.pad_to_multiple_of)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        with_labels = ["labels" in f for f in features]
        if any(with_labels):
            if not all(with_labels):
                raise ValueError("either every feature in a batch has 'labels' or none has")
            labels, _ = pad([f["labels"] for f in features], IGNORE_INDEX, self.target_multiple)
            batch["labels"] = labels
        batch["index"] = torch.as_tensor([f["index"] for f in features], dtype=torch.long)
        batch["num_tokens"] = count_tokens(batch)
        return batch


class CausalCollator:
    """Prompt+target rows for decoder-only training, plus left-padded prompts for generation.

    ``input_ids``/``attention_mask``/``labels``: prompt and target concatenated, right-padded, with
    labels -100 on the prompt and the padding. ``prompt_input_ids``/``prompt_attention_mask``: the
    prompts alone, left-padded so generation continues right after each prompt. Features without
    ``target_ids`` (predict) get only the prompt tensors.

    ``target_positions``/``target_labels`` ``[B, T]`` (T: the longest target, rounded up): for each row, the
    positions whose hidden state predicts a target token, and that token (-100 past the row's target). They
    are the label tokens of ``labels`` after the causal shift, in order: the chunked loss reads the hidden
    states there instead of making logits for every prompt position (``fastpath.chunked_loss``).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, target_pad_to_multiple_of: int | None = None) -> None:
        _check(pad_token_id, pad_to_multiple_of)
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.target_multiple = _target_multiple(pad_to_multiple_of, target_pad_to_multiple_of)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        prompts = [f["prompt_ids"] for f in features]
        prompt_ids, prompt_mask = pad(prompts, self.pad_token_id, self.pad_to_multiple_of, left=True)
        batch = {"prompt_input_ids": prompt_ids, "prompt_attention_mask": prompt_mask}
        with_targets = ["target_ids" in f for f in features]
        if any(with_targets):
            if not all(with_targets):
                raise ValueError("either every feature in a batch has 'target_ids' or none has")
            rows = [[*f["prompt_ids"], *f["target_ids"]] for f in features]
            input_ids, attention_mask = pad(rows, self.pad_token_id, self.pad_to_multiple_of)
            label_rows = [[IGNORE_INDEX] * len(f["prompt_ids"]) + list(f["target_ids"]) for f in features]
            labels, _ = pad(label_rows, IGNORE_INDEX, self.pad_to_multiple_of)
            batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            batch.update(zip(("target_positions", "target_labels"), target_rows(features, self.target_multiple)))
        batch["index"] = torch.as_tensor([f["index"] for f in features], dtype=torch.long)
        batch["num_tokens"] = count_tokens(batch)
        return batch


def _target_multiple(pad_to_multiple_of: int, target_pad_to_multiple_of: int | None) -> int:
    if target_pad_to_multiple_of is None:
        return pad_to_multiple_of
    if target_pad_to_multiple_of < 1:
        raise ValueError(f"--data.target_pad_to_multiple_of must be > 0, got {target_pad_to_multiple_of}")
    return target_pad_to_multiple_of


def target_rows(features: Sequence[dict[str, Any]], multiple: int) -> tuple[Tensor, Tensor]:
    """(positions, labels) ``[B, T]``: target token ``k`` of row ``i`` is predicted at position ``len(prompt) + k - 1``;
    padding entries point at position 0 with label -100 (so does a first target token with no prompt before it)."""
    width = round_up(max((len(f["target_ids"]) for f in features), default=0), multiple)
    positions = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    for row, f in enumerate(features):
        start, target = len(f["prompt_ids"]) - 1, list(f["target_ids"])
        first = 1 if start < 0 else 0  # no prompt: nothing predicts the first target token
        positions[row, first : len(target)] = torch.arange(start + first, start + len(target))
        labels[row, first : len(target)] = torch.as_tensor(target[first:], dtype=torch.long)
    return positions, labels


class WithRecordFields:
    """Wraps a collator: adds ``fname``, ``references`` and ``dialogue`` lists looked up by ``index``.

    A plain class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, collate: Seq2SeqCollator | CausalCollator, records: Sequence[Record]) -> None:
        self.collate = collate
        self.records = records

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self.collate(features)
        records = [self.records[f["index"]] for f in features]
        batch["fname"] = [r.fname for r in records]
        batch["references"] = [list(r.references) for r in records]
        batch["dialogue"] = [r.dialogue for r in records]
        if any(f.get("is_padding") for f in features):
            batch["is_padding"] = True  # a rank's filler batch: run, never scored (SortedEvalBatchSampler)
        return batch
