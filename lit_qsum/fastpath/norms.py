"""RMS norms of T5 and Llama-family models as one fused ``F.rms_norm`` call.

transformers writes these norms as five to six elementwise ops (cast, square, mean, add, rsqrt, two multiplies),
each a kernel that reads and writes the whole activation, forward, again in checkpointing's recompute, and in
backward. On CUDA ``F.rms_norm`` is one fused kernel each way. The math is the same, computed in float32 as
transformers does (the inputs are cast to float32 first, as transformers casts them; autocast never lowers a norm's
precision); only the order of the mean's additions can differ, so results agree to float32 rounding.

- T5 style (``T5LayerNorm``, mT5, LongT5, UMT5): ``weight * (x * rsqrt(mean(x²) + eps))`` with ``x`` promoted to
  float32; a bf16/fp16 weight rounds the normalized value to the weight's dtype before the multiply.
- Llama style (Llama, Mistral, Qwen2, Qwen3 and others that copy ``LlamaRMSNorm``): the normalized value is rounded to
  the input's dtype, then multiplied by the weight.

``one_pass`` (``speed.one_pass_rms_norm``): where input and weight share a 16-bit dtype (bf16 training), the cast in,
the norm, the cast out and the weight's multiply become one ``_fused_rms_norm`` kernel each way, with the same float32
math and one rounding at the end instead of two: results within one bf16 rounding of transformers'. The op is called
below autocast, which would otherwise run ``rms_norm`` in float32 and hand float32 activations to every next layer.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

T5_STYLE = frozenset({"T5LayerNorm", "MT5LayerNorm", "LongT5LayerNorm", "UMT5LayerNorm"})
LLAMA_STYLE = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "SolarRMSNorm"})


def _t5_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if weight.dtype in (torch.float16, torch.bfloat16):
        normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.variance_epsilon)
        return weight * normed.to(weight.dtype)
    return F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), weight, self.variance_epsilon)


def _llama_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.variance_epsilon)
    return self.weight * normed.to(hidden_states.dtype)


_HALF = (torch.float16, torch.bfloat16)
_ONE_PASS = getattr(torch.ops.aten, "_fused_rms_norm", None)  # torch >= 2.8


def _one_pass(two_pass: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if _ONE_PASS is None or hidden_states.dtype != weight.dtype or weight.dtype not in _HALF:
            return two_pass(self, hidden_states)
        return _ONE_PASS(hidden_states, [hidden_states.shape[-1]], weight, self.variance_epsilon)[0]

    return forward


_t5_one_pass, _llama_one_pass = _one_pass(_t5_forward), _one_pass(_llama_forward)


def fuse_rms_norms(model: torch.nn.Module, one_pass: bool = False) -> int:
    """Give every T5- or Llama-style RMS norm of ``model`` the fused forward; returns how many.

    A norm is taken only where it has the attributes the fused forward reads (``weight``, ``variance_epsilon``), so a
    class that shares a name but not the code is left alone. Idempotent.
    """
    t5, llama = (_t5_one_pass, _llama_one_pass) if one_pass else (_t5_forward, _llama_forward)
    count = 0
    for module in model.modules():
        name = type(module).__name__
        forward = t5 if name in T5_STYLE else llama if name in LLAMA_STYLE else None
        if forward is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if not isinstance(getattr(module, "variance_epsilon", None), float):
            continue
        module.forward = types.MethodType(forward, module)
        count += 1
    return count
