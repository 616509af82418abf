"""Typed groups of model settings; LightningCLI turns them into ``--model.lora.rank`` and friends.

Each ``__post_init__`` checks its own fields and names the flag that is wrong, so a bad YAML fails at
parse time, before any weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lit_qsum.errors import UserInputError

ComputeDtype = Literal["bfloat16", "float16", "float32", "auto"]


@dataclass
class LoraSettings:
    """LoRA adapter shape; the per-module patterns map a module-name regex to its own rank or alpha."""

    rank: int = 16
    """LoRA rank r. Higher: more capacity, more memory and adapter size."""
    alpha: int = 32
    """LoRA alpha; the update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA input. 0 is faster (skips a mask kernel per layer)."""
    target_modules: list[str] | None = None
    """Module names to adapt; None = every attention and FFN linear of the architecture."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides, e.g. {'q|k|v|o': 32, 'wi_0|wi_1|wo': 16, 'lm_head': 8}."""
    alpha_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module alpha overrides, same keys as rank_pattern."""
    use_rslora: bool = False
    """Rank-stabilized LoRA scaling alpha / sqrt(rank)."""

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise UserInputError(f"--model.lora.rank must be > 0, got {self.rank}")
        if self.alpha <= 0:
            raise UserInputError(f"--model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"--model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise UserInputError("--model.lora.target_modules must name at least one module, or be null for the default")
        for name, pattern in (("rank_pattern", self.rank_pattern), ("alpha_pattern", self.alpha_pattern)):
            for key, value in pattern.items():
                if value <= 0:
                    raise UserInputError(f"--model.lora.{name} value for {key!r} must be > 0, got {value}")


@dataclass
class QuantizationSettings:
    """bitsandbytes 4-bit loading of the frozen base weights (used by the qlora and unsloth backends)."""

    load_in_4bit: bool = True
    """Quantize the frozen base to 4 bit when the backend is qlora/unsloth."""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    """NF4 is the QLoRA data type; fp4 is there for comparison."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the quantization constants too: ~0.4 bit/param less memory, negligible speed cost."""
    bnb_4bit_compute_dtype: ComputeDtype = "auto"
    """dtype of the dequantized matmuls; auto = bfloat16 on GPUs that support it, else float32."""
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    """Storage dtype of packed weights; set it to the compute dtype for FSDP (it can't flatten mixed dtypes)."""


@dataclass
class GenerationSettings:
    """How summaries are generated at validation, test and predict time."""

    num_beams: int = 1
    """Beam width. 1 = greedy (fastest); 4 is the usual quality setting."""
    max_new_tokens: int | None = None
    """Longest summary; None = the data module's decoder_max_len."""
    no_repeat_ngram_size: int = 0
    """Forbid repeating n-grams of this size (0 = off); 3 curbs looping summaries."""
    length_penalty: float = 1.0
    """Beam score length exponent: > 1 favours longer summaries."""
    early_stopping: bool = True
    """Stop beam search when num_beams finished candidates exist."""

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise UserInputError(f"--model.generation.num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserInputError(f"--model.generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.no_repeat_ngram_size < 0:
            raise UserInputError(
                f"--model.generation.no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"
            )


@dataclass
class SpeedSettings:
    """The training fast path (``lit_qsum.fastpath``); every piece keeps the math of the plain peft path."""

    fused_lora: bool = True
    """One fused autograd op per LoRA layer (dequantize + base GEMM + adapter) instead of peft's modules."""
    adapter_copies: bool = True
    """With ``fused_lora``: keep each adapter's weights in the compute dtype, remade once per optimizer step, instead of
    casting them in every forward and recompute (the same values; ~4 small kernels fewer per LoRA layer and
    micro-batch)."""
    dequant: Literal["bitsandbytes", "torch"] = "bitsandbytes"
    """4-bit dequantization by bitsandbytes' kernel, or by plain torch ops (same values; traceable)."""
    cudnn_attention: bool = False
    """Allow cuDNN scaled-dot-product attention everywhere; it re-plans for every new batch shape (~9 ms of host time
    per attention call on an H200), which generation's growing lengths hit at every token."""
    cudnn_attention_in_graphs: bool = True
    """With ``cuda_graphs``: cuDNN attention in the training steps only (the captures and the few eager micro-batches
    beside them). A capture plans once per batch shape and replays never re-plan, so the faster kernel costs nothing
    per step there (t5-large with cuDNN attention allowed in training: 26.6 against 29.0 GPU µs per token on an
    H200); generation keeps flash / memory-efficient attention. A capture that fails with it is retried without it.
    H200, t5-large (2026-11-30, session 10): steady tokens/s +6% at micro-batch 16, +8% at 64; each capture costs
    ~0.15 s more (cuDNN plans the shape once)."""
    compile: bool = False
    """torch.compile each transformer block for training (fused kernels, far less host time per layer);
    costs a one-off compile of minutes (a t5-large run had not finished it after 169 s on an H200), so it pays on long
    runs only. Generation stays eager."""
    cuda_graphs: bool = True
    """Capture each batch shape's training step (forward + backward) as a CUDA graph and replay it: one host
    call instead of ~10k kernel launches. Each new shape costs one capture (about one eager step), so pad
    batches to few shapes (--data.pad_to_multiple_of 64). CUDA only; off under FSDP and 16-mixed."""
    fused_optimizer: bool = True
    """Run torch's Adam/AdamW as its fused CUDA kernel (one launch for every adapter tensor) unless the
    optimizer's init_args choose foreach or fused themselves."""
    chunked_loss: bool = True
    """Decoder-only models (Llama, Mistral, Qwen): the training loss over chunks of rows, without the full ``[batch,
    length, vocab]`` float32 logits (the same loss and gradients); not under FSDP. Qwen2.5-1.5B at micro-batch 16 on
    an H200: peak allocated 19.8 -> 4.2 GiB, reserved 50.3 -> 5.8 GiB, 7% fewer tokens/s; turn it off only where
    memory is plentiful."""
    chunked_seq2seq_loss: bool = True
    """The same for seq2seq models (T5, mT5, BART, mBART, KoBART): the decoder's loss over chunks of rows (the same loss
    and gradients up to float32 summation order). bart-large at micro-batch 64 on an H200: peak allocated 10.72 -> 4.92
    GiB (the recipe's: 9.91), 7% fewer tokens/s. Not under FSDP (FSDP gathers the head only inside the model's own
    forward, so it computes the model's own loss): a DDP run and an FSDP run then agree to float32 summation order,
    not bitwise."""
    fp32_modules_in_bf16: bool = True
    """Under bf16 precision, store the frozen layers transformers keeps in float32 (T5's ``wo``) in bf16: the same
    results (autocast runs them in bf16), half their memory, no per-call casts."""
    fused_rms_norm: bool = True
    """T5's and Llama-family RMS norms as one ``F.rms_norm`` kernel each way instead of five or six elementwise ones
    (the same float32 math)."""
    one_pass_rms_norm: bool = True
    """With ``fused_rms_norm``, under bf16: the casts and the weight's multiply folded into that kernel too (one kernel
    each way instead of four; float32 math, one rounding instead of two, so within one bf16 rounding of transformers').
    H200, micro-batch 16: GPU time per token -5% for t5-large (31.6 -> 30.0 us) and Qwen2.5-1.5B (39.4 -> 37.5 us)."""
    fused_gelu: bool = True
    """T5's ``gelu_new`` (T5 v1.1, flan-T5, mT5) as ``nn.GELU(approximate="tanh")``: the same formula as one kernel
    each way instead of eight, in float32 math (results agree to float32 rounding)."""
    bf16_activations: bool = True
    """Under bf16 precision, T5 and BART: the LoRA layers whose output only feeds bf16 work (q/k/v, the FFN's input
    projections) hand on their GEMM's bf16 result instead of casting it up to float32 (bitsandbytes returns its input's
    dtype, float32 after these models' float32 norms), and T5's in-block norms return bf16 (each next linear casts to
    bf16 anyway). Attention and BART's FFN compute as before; T5's gated FFN rounds its activation and gate product to
    bf16 (two roundings more), and q/k/v's input gradients are summed in bf16. The FFN's elementwise work then moves
    half the bytes in a few kernels (see ``lit_qsum.fastpath.activations``)."""
    backward_outside_autocast: bool = False
    """Run each backward with autocast off, as torch's AMP docs recommend. Lightning calls a manually optimized
    module's backward inside ``training_step``, so under bf16-mixed autocast stays on through the backward: every
    backward op dispatches through it, and ops that torch runs in the forward's dtypes (custom autograd functions
    decorated with ``custom_bwd`` keep the forward's autocast state) give the same results either way. Opt-in: on an
    H200 it changed nothing for the Unsloth backend (16.18k against 16.20k tokens/s, 2026-11-30, session 11); the
    QLoRA path's figure is not measured yet."""
    contiguous_attention_bias: bool = True
    """T5: lay the relative-position bias out contiguously so attention takes SDPA's fused kernel, and (under
    checkpointing) build the zero bias of layers without one as a constant, not a tensor that requires grad."""
