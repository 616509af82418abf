"""Causal-LM and seq2seq cross-entropy without the full ``[batch, length, vocab]`` logits.

transformers' causal LMs compute every position's logits (bf16), upcast them to float32 and take the mean
cross-entropy over the label tokens; for a 151,936-token vocabulary (Qwen2.5) at micro-batch 16 x 600 tokens that is
several GB of logits, their float32 copy and their gradient, and under CUDA graphs it stays reserved in the graph's
memory pool. ``linear_cross_entropy`` computes the same loss a chunk of rows at a time: each chunk's logits are made,
reduced to the chunk's loss and dropped, and the backward makes them again to get the gradient of the hidden states.
The LM head is frozen (LoRA adapts attention and MLP layers), so no gradient of its weight is needed. It costs one
more ``[rows, hidden] x [hidden, vocab]`` GEMM per chunk; there are no host syncs, so it can be captured.

Only the rows that predict a label token need logits. A summarizer's row is a prompt (the dialogue, most of the row,
label -100) and then the summary, so ``causal_lm_loss`` takes the hidden states at the collator's
``target_positions`` (a static ``[batch, longest summary]`` shape, as a CUDA graph needs) instead of every position:
the head's GEMMs and its float32 softmax passes shrink by the prompt's share of the row.

Seq2seq models (``seq2seq_lm_loss``: T5, mT5, BART, mBART, KoBART) get the same treatment for their decoder's
logits: at micro-batch 64 with a 50k vocabulary (bart-large) the logits, their float32 copy and their gradient are
~2 GB of the step's peak. T5's decoder output reaches the head as the model's own forward scales it (captured at the
head's input); BART's ``final_logits_bias`` is added to each chunk's logits as the model adds it.

The arithmetic is transformers': logits in the compute dtype (autocast's, else the hidden states'), plus the bias
where the model has one (with the model's type promotion), upcast to float32, ``logsumexp - logit[label]`` per label
token, the sum divided by the number of label tokens (NaN when there are none, as
``cross_entropy(reduction="mean")`` gives).
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100
# causal-LM classes whose logits are exactly lm_head(base_model(...).last_hidden_state), no scaling or soft-capping
PLAIN_HEAD_CAUSAL_LMS = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
# seq2seq classes whose logits are lm_head(decoder output, scaled as the model does) [+ final_logits_bias]
T5_HEAD_SEQ2SEQ_LMS = frozenset({"T5ForConditionalGeneration", "MT5ForConditionalGeneration"})
BART_HEAD_SEQ2SEQ_LMS = frozenset({"BartForConditionalGeneration", "MBartForConditionalGeneration"})


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels``, chunk by chunk; gradients for ``hidden`` only."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int,
                dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            logits = _logits(hidden[start:start + chunk_rows], w, bias, dtype)
            target = labels[start:start + chunk_rows]
            valid = target != IGNORE_INDEX
            picked = logits.gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
            total += torch.where(valid, torch.logsumexp(logits, dim=1) - picked, 0.0).sum()
        count = (labels != IGNORE_INDEX).sum()
        ctx.save_for_backward(hidden, weight, labels, count, bias)
        ctx.chunk_rows, ctx.dtype = chunk_rows, dtype
        return total / count

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        with torch.autocast(grad.device.type, enabled=False):  # explicit dtypes below; CPU backward runs in autocast
            return LinearCrossEntropy._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
        hidden, weight, labels, count, bias = ctx.saved_tensors
        dtype, rows = ctx.dtype, ctx.chunk_rows
        w = weight.to(dtype)
        scale = grad.float() / count
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], rows):
            logits = _logits(hidden[start:start + rows], w, bias, dtype)
            target = labels[start:start + rows]
            valid = target != IGNORE_INDEX
            probs = torch.softmax(logits, dim=1)
            probs.scatter_add_(1, target.clamp_min(0).unsqueeze(1), torch.full_like(probs[:, :1], -1.0))
            probs.mul_(torch.where(valid, scale, 0.0).unsqueeze(1))
            grad_hidden[start:start + rows] = torch.mm(probs.to(dtype), w).to(hidden.dtype)
        return grad_hidden, None, None, None, None, None


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """One chunk's float32 logits as the model computes them: the head in ``dtype``, plus the bias with torch's type
    promotion (BART adds its float32 or bf16 ``final_logits_bias`` to the head's output), then float32."""
    logits = torch.mm(hidden.to(dtype), weight.t())
    if bias is not None:
        logits = logits + bias
    return logits.float()


CHUNK_BYTES = 512 << 20
"""Size of one chunk's float32 logits (the backward holds two such buffers at a time)."""


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         chunk_rows: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy of ``hidden [..., H] @ weight [V, H].T (+ bias [V])`` against ``labels [...]`` (-100
    ignored).

    ``chunk_rows`` rows of logits at a time (default: as many as fit in ``CHUNK_BYTES`` of float32).
    """
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (weight.shape[0] * 4))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), chunk_rows,
                                        dtype, None if bias is None else bias.reshape(-1))


def plain_head_causal_lm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The transformers causal LM inside ``model`` (a peft model or the LM itself) when its loss can be chunked:
    a class whose logits are ``lm_head(model(...))`` with a frozen, bias-free, unquantized head; else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in PLAIN_HEAD_CAUSAL_LMS:
        return None
    head = getattr(base, "lm_head", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    if getattr(base.config, "final_logit_softcapping", None) is not None:
        return None
    return base


def causal_lm_loss(lm: torch.nn.Module, batch: dict[str, torch.Tensor], *, chunk_rows: int | None = None) -> torch.Tensor:
    """transformers' causal-LM training loss of ``batch`` (labels shifted by one) through ``linear_cross_entropy``.

    With the collator's ``target_positions``/``target_labels``, only the hidden states that predict a target token
    go through the head: a summary's loss skips the prompt's positions, most of each row (the same label tokens,
    so the same loss). Without them, every position does, as transformers computes it.
    """
    hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if "target_positions" in batch:
        positions = batch["target_positions"]
        rows = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return linear_cross_entropy(rows, lm.lm_head.weight, batch["target_labels"], chunk_rows=chunk_rows)
    return linear_cross_entropy(hidden[:, :-1], lm.lm_head.weight, batch["labels"][:, 1:], chunk_rows=chunk_rows)


def plain_head_seq2seq_lm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The transformers seq2seq LM inside ``model`` (a peft model or the LM itself) when its loss can be chunked:
    T5/mT5 or BART/mBART (KoBART) with a frozen, bias-free, unquantized head (BART's logits bias is a frozen buffer);
    else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in T5_HEAD_SEQ2SEQ_LMS | BART_HEAD_SEQ2SEQ_LMS:
        return None
    head = getattr(base, "lm_head", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    bias = getattr(base, "final_logits_bias", None)
    if type(base).__name__ in BART_HEAD_SEQ2SEQ_LMS and (bias is None or bias.requires_grad):
        return None
    return base


class _HeadInput(torch.nn.Module):
    """Stands in for a T5 head during one forward: keeps the head's input (the decoder output as the model scaled
    it) and returns zero logits that take no memory (a zero-stride view), which the model returns unused."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.seen: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.seen = hidden
        return hidden.new_zeros(()).expand(*hidden.shape[:-1], self.vocab)


def seq2seq_lm_loss(lm: torch.nn.Module, batch: dict[str, torch.Tensor], *,
                    chunk_rows: int | None = None) -> torch.Tensor:
    """transformers' seq2seq training loss of ``batch`` (decoder inputs = the labels shifted right, as the model makes
    them) through ``linear_cross_entropy``; ``lm`` from ``plain_head_seq2seq_lm``."""
    labels = batch["labels"]
    decoder_input_ids = lm.prepare_decoder_input_ids_from_labels(labels=labels)
    head = lm.lm_head
    if type(lm).__name__ in BART_HEAD_SEQ2SEQ_LMS:
        hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          decoder_input_ids=decoder_input_ids, use_cache=False).last_hidden_state
        return linear_cross_entropy(hidden, head.weight, labels, chunk_rows=chunk_rows, bias=lm.final_logits_bias)
    stand_in = _HeadInput(head.weight.shape[0])
    lm.lm_head = stand_in
    try:
        lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids,
           use_cache=False)
    finally:
        lm.lm_head = head
    if stand_in.seen is None:
        raise RuntimeError(f"{type(lm).__name__}'s forward did not call its lm_head: the chunked loss can't be used "
                           "with this transformers version (--model.speed.chunked_seq2seq_loss false)")
    return linear_cross_entropy(stand_in.seen, head.weight, labels, chunk_rows=chunk_rows)
