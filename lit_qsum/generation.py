"""Summaries from a model: beam search per the generation settings, and the decoding rule scores and CSVs share."""

from __future__ import annotations

from typing import Any

import torch

from lit_qsum.distributed import fsdp
from lit_qsum.settings import GenerationSettings


@torch.no_grad()
def generate_summaries(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str,
    settings: GenerationSettings,
    batch: dict[str, Any],
    *,
    default_max_new_tokens: int,
) -> list[str]:
    """Summaries for a collated batch: beam search per ``settings``; causal prompts are stripped from the outputs.

    Args:
        model: The (peft) seq2seq or causal model, possibly FSDP-wrapped (every rank then steps together).
        tokenizer: The model's tokenizer (pad id, decoding).
        task: ``seq2seq`` (reads ``input_ids``) or ``causal`` (reads the left-padded ``prompt_input_ids``).
        settings: ``--model.generation``.
        batch: A batch from lit-qsum's collators.
        default_max_new_tokens: Used when ``settings.max_new_tokens`` is unset (the data's decoder length).

    Returns:
        One summary per row, decoded by ``decode_summaries``.
    """
    gen = settings
    max_new = gen.max_new_tokens or default_max_new_tokens
    kwargs = dict(
        max_new_tokens=max_new,
        num_beams=gen.num_beams,
        no_repeat_ngram_size=gen.no_repeat_ngram_size or None,
        length_penalty=gen.length_penalty,
        early_stopping=gen.early_stopping if gen.num_beams > 1 else False,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    if task == "causal":
        input_ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    else:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
    with fsdp.generation_context(model) as sharded_kwargs:
        output = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs, **sharded_kwargs)
    if task == "causal":  # prompts are left-padded to one width, so the summary starts after it
        output = output[:, input_ids.shape[1] :]
    return decode_summaries(tokenizer, output)


def decode_summaries(tokenizer: Any, token_ids: torch.Tensor | list[list[int]]) -> list[str]:
    """Generated ids to summary text, as scored and written by validate/test/predict.

    Rule: every special token (pad, eos, bos, unk, and any other the tokenizer marks special) is
    dropped, except tags shaped ``#Name#`` (DialogSum's ``#Person1#``, ``#PhoneNumber#``...): references
    contain them, so they stay even where a tokenizer registers them as special tokens, which
    ``skip_special_tokens=True`` would delete. Whitespace runs become one space, ends are stripped.
    """

    def is_tag(token: str) -> bool:
        inner = token[1:-1]
        return len(token) > 2 and token[0] == token[-1] == "#" and "#" not in inner and inner == "".join(inner.split())

    # fast tokenizers skip every added token flagged special, listed in all_special_tokens or not
    special = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    special.update(zip(tokenizer.all_special_ids, tokenizer.all_special_tokens))
    drop = {i for i, token in special.items() if not is_tag(token)}
    rows = [[int(i) for i in row if int(i) not in drop] for row in token_ids]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [" ".join(t.split()) for t in texts]


