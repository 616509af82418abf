"""The fast path for LoRA/QLoRA training: fewer, larger kernels and less host work per step.

What the Hugging Face recipe spends its steps on is host time (the GPU idles most of each step),
so each piece here cuts launches or Python per layer and keeps the math:

- ``lora_linear``: one autograd node per LoRA layer (4-bit dequantize, base GEMM, dropout, the two
  adapter GEMMs fused into the base output) in place of peft's eight-odd modules and ops;
- ``dequant``: NF4/FP4 (double-quant) dequantization, through bitsandbytes' kernel or in plain torch;
- ``attention``: the scaled-dot-product backend choice (cuDNN re-plans for every new shape);
- ``activations``: T5/BART activations in bf16 where only bf16 work reads them, T5's tanh GELU as one kernel.

``apply_speedups`` applies what ``SpeedSettings`` asks for and returns a report for the log.
"""

from lit_qsum.fastpath.apply import apply_speedups, restore_speedups

__all__ = ["apply_speedups", "restore_speedups"]
