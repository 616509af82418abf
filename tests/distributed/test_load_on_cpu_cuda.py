"""``QLoraFSDPStrategy(load_on_cpu=True)`` (the default) on a GPU: the 4-bit base loaded into host memory, each weight
quantized on the GPU and handed back (``quantize_4bit_on``), then moved to the GPU (as FSDP moves each unit when it
shards it: ``param.data = param.to(device)``, which carries bitsandbytes' quant state along) is the base loaded on the
GPU, bit for bit, and the model gives the same loss. (bitsandbytes' own CPU quantization failed this: session 12.)

  python -m pytest -q -m gpu tests/distributed/test_load_on_cpu_cuda.py      # one CUDA GPU, seconds
"""

from __future__ import annotations

import bitsandbytes.functional as bnbF
import pytest
import torch

from lit_qsum.backends.loader import ModelSpec, load_model
from lit_qsum.settings import QuantizationSettings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

T5 = {"model_type": "t5", "d_model": 256, "d_ff": 512, "d_kv": 32, "num_heads": 8, "num_layers": 2,
      "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}


def four_bit_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each 4-bit layer's weight, dequantized with its own quant state (which must be on the weight's device)."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            assert state.absmax.device == weight.device, name
            out[name] = bnbF.dequantize_4bit(weight.data, state).float()
    return out


def test_a_base_quantized_on_the_host_and_moved_is_the_base_quantized_on_the_gpu() -> None:
    gpu = torch.device("cuda", 0)
    spec = ModelSpec(model_config=T5, tokenizer="lit_qsum:demo", backend="qlora", init_seed=5,
                     quantization=QuantizationSettings(bnb_4bit_quant_storage="bfloat16",
                                                       bnb_4bit_compute_dtype="bfloat16"))
    on_gpu = load_model(spec, device=gpu).model
    moved = load_model(spec, device=gpu, load_device=torch.device("cpu")).model
    assert next(p for p in moved.parameters() if not p.requires_grad).device.type == "cpu"
    moved.to(gpu)
    reference, candidate = four_bit_weights(on_gpu), four_bit_weights(moved)
    assert reference.keys() == candidate.keys() and reference
    for name, weight in reference.items():
        torch.testing.assert_close(candidate[name], weight, rtol=0, atol=0, msg=name)
    ids = torch.randint(5, 300, (4, 32), device=gpu, generator=torch.Generator(gpu).manual_seed(0))
    labels = torch.randint(5, 300, (4, 8), device=gpu, generator=torch.Generator(gpu).manual_seed(1))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        losses = [m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.float()
                  for m in (on_gpu.eval(), moved.eval())]
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
