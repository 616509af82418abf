"""QLoraFSDPStrategy's pieces that need no process group: the wrap policy, the dtype checks, the config checks."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from lit_qsum.distributed.fsdp import QLoraFSDPStrategy, check_fsdp_dtypes, qlora_auto_wrap_policy
from lit_qsum.errors import UserInputError

SHAPES = {
    "t5": dict(model_type="t5", vocab_size=64, d_model=16, d_ff=32, d_kv=4, num_heads=4, num_layers=2,
               num_decoder_layers=2, feed_forward_proj="gated-gelu"),
    "bart": dict(model_type="bart", vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32),
    "llama": dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
}


def frozen_model(kind: str) -> nn.Module:
    fields = dict(SHAPES[kind])
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    auto = transformers.AutoModelForCausalLM if kind == "llama" else transformers.AutoModelForSeq2SeqLM
    model = auto.from_config(config)
    model.requires_grad_(False)
    return model


def wrapped(model: nn.Module, policy) -> list[str]:
    return sorted(name for name, m in model.named_modules() if policy(m, recurse=False, nonwrapped_numel=0))


@pytest.mark.parametrize(("kind", "block", "count"),
                         [("t5", "T5Block", 4), ("bart", "Bart", 2), ("llama", "LlamaDecoderLayer", 2)])
def test_policy_wraps_the_blocks_the_model_declares(kind: str, block: str, count: int) -> None:
    model = frozen_model(kind)
    names = wrapped(model, qlora_auto_wrap_policy(model))
    assert len(names) == count
    assert all(type(model.get_submodule(n)).__name__.startswith(block) for n in names)


def test_policy_gives_frozen_leaves_of_another_dtype_their_own_unit() -> None:
    # T5 keeps `wo` in float32 next to bfloat16(-stored 4-bit) weights; one flat parameter can't hold both
    model = frozen_model("t5").to(torch.bfloat16)
    for name, module in model.named_modules():
        if name.endswith("DenseReluDense.wo"):
            module.float()
    names = wrapped(model, qlora_auto_wrap_policy(model))
    assert sum(n.endswith(".wo") for n in names) == 4 and sum(n.endswith(".block.0") for n in names) == 2
    lora_like = nn.Linear(16, 4)  # trainable leaves are left to FSDP's ignored_states, not wrapped
    assert not qlora_auto_wrap_policy(model)(lora_like, recurse=False, nonwrapped_numel=0)


def test_policy_block_classes_override_and_a_missing_class_is_named() -> None:
    model = frozen_model("t5")
    names = wrapped(model, qlora_auto_wrap_policy(model, ["T5LayerFF"]))
    assert len(names) == 4 and all(n.endswith("layer.1") or n.endswith("layer.2") for n in names)
    with pytest.raises(UserInputError, match="block_classes"):
        qlora_auto_wrap_policy(model, ["NoSuchBlock"])


class Params4bit(nn.Parameter):
    """Stands in for bitsandbytes' class of that name (only the name is checked)."""


def test_4bit_storage_checks_name_the_flag_to_change() -> None:
    model = nn.Linear(4, 4)
    model.weight = Params4bit(torch.zeros(8, 1, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(UserInputError, match="bnb_4bit_quant_storage bfloat16"):
        check_fsdp_dtypes(model, None)
    model.weight = Params4bit(torch.zeros(8, 1, dtype=torch.bfloat16), requires_grad=False)
    check_fsdp_dtypes(model, torch.distributed.fsdp.MixedPrecision(param_dtype=torch.bfloat16))
    with pytest.raises(UserInputError, match="--trainer.precision bf16-mixed"):
        check_fsdp_dtypes(model, torch.distributed.fsdp.MixedPrecision(param_dtype=torch.float32))


def test_backward_prefetch_is_a_flag_fsdp_receives() -> None:
    from torch.distributed.fsdp import BackwardPrefetch

    assert QLoraFSDPStrategy().kwargs["backward_prefetch"] is BackwardPrefetch.BACKWARD_PRE  # FSDP's own default
    assert QLoraFSDPStrategy(backward_prefetch=None).kwargs["backward_prefetch"] is None
    assert QLoraFSDPStrategy(backward_prefetch="BACKWARD_POST").kwargs["backward_prefetch"] is BackwardPrefetch.BACKWARD_POST


def test_activation_offload_wraps_the_training_forward_with_checkpointing_only() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from lit_qsum.distributed.fsdp import offloading_loss

    weight = torch.randn(512, 512, requires_grad=True)  # 1 MiB: offload_min_bytes' default

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x @ weight).tanh().sum()  # saves x, weight and tanh's output for backward

    cpu = torch.device("cpu")
    offloaded, line = offloading_loss(QLoraFSDPStrategy(), loss, checkpointing=True, device=cpu)
    assert offloaded is not loss and "waits in host memory" in line
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        x = torch.randn(3, 512, requires_grad=True)  # so matmul saves the weight (1 MiB) for x's gradient
        offloaded(x).backward()  # the offload's hooks are innermost: nothing reaches the outer ones
    assert packed == []
    assert offloaded.copied_bytes == 512 * 512 * 4  # the weight went to the host; x and tanh's output (6 KiB) stayed
    want = weight.grad.clone()
    weight.grad = None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        loss(x).backward()
    assert len(packed) >= 2  # without the offload the same forward's saved tensors reach the outer hooks
    assert torch.equal(weight.grad, want)  # exact copies: the same gradient
    assert offloading_loss(QLoraFSDPStrategy(), loss, checkpointing=False, device=cpu)[0] is loss
    assert offloading_loss(QLoraFSDPStrategy(offload_activations=False), loss, checkpointing=True, device=cpu) == (loss, None)
    assert offloading_loss(DDPStrategy(), loss, checkpointing=True, device=cpu) == (loss, None)


def test_activation_offload_copies_a_tensor_saved_through_several_aliases_once() -> None:
    from lit_qsum.distributed.fsdp import offloading_loss

    weights = [torch.randn(4, 4, requires_grad=True) for _ in range(3)]

    def loss(x: torch.Tensor) -> torch.Tensor:
        # like T5's decoder blocks and the encoder output: each block multiplies its own alias of the same tensor
        return sum((x.view_as(x) @ w).sum() for w in weights) + ((x + 1) @ weights[0]).sum()

    offloaded, _ = offloading_loss(QLoraFSDPStrategy(offload_min_bytes=0), loss, checkpointing=True,
                                   device=torch.device("cpu"))
    x = torch.randn(3, 4)
    want_x = x.clone()
    offloaded(x.clone()).backward()
    # x once for its three aliases, x + 1 (another tensor) once; the weights are not saved (x needs no gradient)
    assert offloaded.copied_bytes == 2 * x.numel() * 4
    got = [w.grad.clone() for w in weights]
    for w in weights:
        w.grad = None
    loss(want_x).backward()
    assert all(torch.equal(g, w.grad) for g, w in zip(got, weights))


def test_strategy_refuses_sharded_checkpoints() -> None:
    with pytest.raises(UserInputError, match="state_dict_type must be 'full'"):
        QLoraFSDPStrategy(state_dict_type="sharded")


def test_under_bf16_the_qlora_t5_wo_is_laid_out_like_the_4bit_weights() -> None:
    """What the module does before FSDP wraps a QLoRA T5 under bf16-mixed (as configs/fsdp-qlora.yaml runs it): wo is
    stored in bf16 like the 4-bit weights, so the policy treats it as it treats them (in a real shape: inside its
    block's unit, where float32 wo units held ~1.9 GiB of t5-xl apart from the blocks)."""
    from lit_qsum.backends.loader import ModelSpec, load_model
    from lit_qsum.fastpath import apply_speedups
    from lit_qsum.settings import LoraSettings, QuantizationSettings, SpeedSettings

    spec = ModelSpec(model_config=SHAPES["t5"], tokenizer="lit_qsum:demo", backend="qlora",
                     lora=LoraSettings(rank=4, alpha=8), quantization=QuantizationSettings(bnb_4bit_quant_storage="bfloat16"),
                     gradient_checkpointing=True, init_seed=1)
    model = load_model(spec, device=torch.device("cpu")).model

    def odd_ones() -> tuple[set[torch.dtype], set[str]]:
        wo = {p.dtype for n, p in model.named_parameters() if ".wo.base_layer" in n}
        units = wrapped(model, qlora_auto_wrap_policy(model))
        return wo, {n.rsplit(".", 2)[-2] for n in units if n.endswith(".base_layer")}

    storage = {p.dtype for p in model.parameters() if type(p).__name__ == "Params4bit"}
    assert storage == {torch.bfloat16}
    wo, kinds = odd_ones()
    assert wo == {torch.float32} and ("wo" in kinds) != ("wi_0" in kinds)  # transformers keeps wo apart, in float32
    apply_speedups(model, SpeedSettings(), device=torch.device("cpu"), gradient_checkpointing=True,
                   precision="bf16-mixed")
    wo, kinds = odd_ones()
    assert wo == storage and ("wo" in kinds) == ("wi_0" in kinds)


def test_adapter_copies_are_off_under_fsdp_only() -> None:
    """FSDP steps run eagerly and a rank's memory is the point: the fused layers cast adapters per call there."""
    from lightning.pytorch.strategies import DDPStrategy

    from lit_qsum.distributed.fsdp import QLoraFSDPStrategy, speed_under
    from lit_qsum.settings import SpeedSettings

    speed = SpeedSettings()
    under_fsdp, lines = speed_under(QLoraFSDPStrategy(), speed)
    assert speed.adapter_copies and not under_fsdp.adapter_copies and "adapter_copies off under FSDP" in lines[0]
    assert under_fsdp.fused_lora == speed.fused_lora and under_fsdp.cuda_graphs == speed.cuda_graphs  # nothing else
    assert speed_under(DDPStrategy(), speed) == (speed, [])
    assert speed_under(QLoraFSDPStrategy(), SpeedSettings(adapter_copies=False))[1] == []


def test_the_base_loads_on_the_host_only_under_fsdp_with_load_on_cpu() -> None:
    from lightning.pytorch.strategies import DDPStrategy  # noqa: PLC0415

    from lit_qsum.distributed.fsdp import load_device  # noqa: PLC0415

    gpu = torch.device("cuda", 1)
    assert load_device(QLoraFSDPStrategy(), gpu) == torch.device("cpu")  # default: held on the host until sharded
    assert load_device(QLoraFSDPStrategy(load_on_cpu=False), gpu) == gpu
    assert load_device(DDPStrategy(), gpu) == gpu


def test_the_host_load_line_counts_what_waits_in_host_memory() -> None:
    from lit_qsum.distributed.fsdp import host_load_line  # noqa: PLC0415

    model = torch.nn.Sequential(torch.nn.Linear(8192, 8192, bias=False))  # 0.25 GiB of float32 weights
    model.register_buffer("scale", torch.zeros(16 * 2**20))  # and a 0.0625 GiB buffer
    model.append(torch.nn.Linear(32768, 32768, bias=False, device="meta"))  # 4 GiB not on the host: not counted
    line = host_load_line(model)
    assert "(0.31 GiB in this process" in line and "load_on_cpu false" in line
