"""T5's zero bias of bias-less attention layers as a constant under checkpointing: the same loss and gradients,
and the blocks still checkpoint."""

from __future__ import annotations

import copy

import torch
from transformers import T5Config, T5ForConditionalGeneration

from lit_qsum.fastpath.attention import constant_zero_bias


def _step(model, batch):
    torch.manual_seed(5)  # the same dropout masks for both models
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_constant_zero_bias_keeps_loss_gradients_and_checkpointing() -> None:
    torch.manual_seed(0)
    config = T5Config(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, vocab_size=60,
                      dropout_rate=0.1, decoder_start_token_id=0)  # T5's shipped dropout
    model = T5ForConditionalGeneration(config).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    other = copy.deepcopy(model)
    # bias-less layers: the encoder's and decoder's second self-attention, and every cross-attention
    assert constant_zero_bias(other) == 1 + 1 + 2
    assert constant_zero_bias(other) == 0
    batch = {"input_ids": torch.randint(2, 60, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long),
             "labels": torch.randint(2, 60, (2, 4))}
    want_loss, want = _step(model, batch)

    recomputed = []
    blocks = [m for m in other.modules() if type(m).__name__ == "T5Block"]
    for block in blocks:
        assert block.gradient_checkpointing
        original = block._gradient_checkpointing_func

        def counting(*args, original=original, **kwargs):
            recomputed.append(1)
            return original(*args, **kwargs)

        block._gradient_checkpointing_func = counting
    got_loss, got = _step(other, batch)
    # to rounding: with no gradient wanted for the mask, SDPA may take another (fused) kernel
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert len(recomputed) == 4  # every block still runs under checkpoint
