"""The compiled-block path (``--model.speed.compile true``) trains the same function as eager peft."""

from __future__ import annotations

import pytest
import torch

from lit_qsum.fastpath.apply import compile_blocks
from lit_qsum.fastpath.lora_linear import fuse_lora_layers, make_traceable
from tiny_lora_models import TINY, load_tiny, loss_and_grads, tiny_batch

pytestmark = pytest.mark.slow  # an inductor compile on 2 CPU cores takes about a minute


def test_compiled_blocks_give_peft_loss_and_gradients_and_eval_stays_eager() -> None:
    TINY["t5-1"] = {**TINY["t5"], "num_layers": 1, "num_decoder_layers": 1, "dropout_rate": 0.0}
    _, model = load_tiny("t5-1", "qlora", True, 0.0)
    batch = tiny_batch("t5", model.config.vocab_size)
    loss_ref, grads_ref = loss_and_grads(model, batch, seed=0)

    fuse_lora_layers(model, keep_weight=True)
    assert make_traceable(model) > 0
    assert compile_blocks(model) == 2  # one encoder block, one decoder block
    torch._dynamo.reset()
    loss, grads = loss_and_grads(model, batch, seed=0)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-3, atol=1e-5, msg=name)

    model.eval()  # generation's path: eager blocks, same outputs
    with torch.no_grad():
        eval_loss = model(**batch).loss
    torch.testing.assert_close(eval_loss, loss_ref, rtol=1e-5, atol=1e-5)
