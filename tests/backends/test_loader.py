"""QLoRA / LoRA / full on tiny random-init T5, BART and Llama shapes, on the CPU (bitsandbytes runs NF4 there)."""

from __future__ import annotations

import pytest
import torch

from lit_qsum.backends.loader import ModelSpec, load_model
from lit_qsum.backends.probe import probe_environment
from lit_qsum.errors import UserInputError
from lit_qsum.settings import LoraSettings

# widths of 64: bitsandbytes' CPU inference kernel packs weights in blocks of 64 input features
TINY = {
    "t5": {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 1,
           "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0},
    "bart": {"model_type": "bart", "d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "max_position_embeddings": 128,
             "dropout": 0.0},
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256},
}
CPU = torch.device("cpu")
needs_bnb = pytest.mark.skipif(not probe_environment("cpu").bitsandbytes_works, reason="bitsandbytes 4-bit unavailable")


def build(kind: str, backend: str = "qlora", **lora) -> object:
    spec = ModelSpec(model_config=TINY[kind], tokenizer="lit_qsum:demo", backend=backend, lora=LoraSettings(**lora))
    return load_model(spec, device=CPU)


def batch(loaded, n: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (n, length), generator=g)
    if loaded.task == "causal":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(5, 300, (n, 6), generator=g)}


@needs_bnb
@pytest.mark.parametrize("kind", ["t5", "bart", "llama"])
def test_qlora_quantizes_base_trains_only_lora_and_loss_falls(kind: str) -> None:
    import bitsandbytes as bnb

    loaded = build(kind, dropout=0.0)
    model = loaded.model
    assert loaded.decision.backend == "qlora"
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no 4-bit layers"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    assert all(m.weight.quant_state.nested for m in four_bit)  # double quantization
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    b = batch(loaded)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


@needs_bnb
def test_qlora_adapter_saves_and_reloads_to_same_outputs(tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, BitsAndBytesConfig

    loaded = build("t5", dropout=0.0)
    model = loaded.model
    with torch.no_grad():  # make the adapter non-trivial (lora_B starts at 0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    # compare in train mode without dropout: bitsandbytes' CPU eval path repacks weights and rounds differently
    model.train()
    b = batch(loaded)
    expected = model(**b).logits
    model.save_pretrained(tmp_path / "adapter")
    base_path = model.base_model.model.name_or_path
    base = AutoModelForSeq2SeqLM.from_pretrained(
        base_path,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                               bnb_4bit_compute_dtype=torch.float32),
        device_map={"": "cpu"},
        dtype=torch.float32,
    )
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").train()
    torch.testing.assert_close(reloaded(**b).logits, expected)


def test_gradient_checkpointing_with_lora_backpropagates() -> None:
    spec = ModelSpec(model_config=TINY["t5"], tokenizer="lit_qsum:demo", backend="lora", gradient_checkpointing=True)
    loaded = load_model(spec, device=CPU)
    loaded.model.train()
    loaded.model(**batch(loaded)).loss.backward()
    grads = [p.grad for n, p in loaded.model.named_parameters() if "lora_B" in n]  # lora_A gets 0 grad while B = 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_rank_and_alpha_patterns_apply_per_module() -> None:
    loaded = build("t5", backend="lora", rank=4, rank_pattern={"wo": 2}, alpha_pattern={"wo": 4})
    shapes = {n: p.shape for n, p in loaded.model.named_parameters() if "lora_A" in n}
    assert any(n.endswith("wo.lora_A.default.weight") and s[0] == 2 for n, s in shapes.items())
    assert any(n.endswith("q.lora_A.default.weight") and s[0] == 4 for n, s in shapes.items())


def test_full_finetuning_trains_everything() -> None:
    loaded = build("bart", backend="full")
    assert all(p.requires_grad for p in loaded.model.parameters())


def test_missing_model_path_is_a_clear_error() -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(ModelSpec(model_name_or_path="./no/such/model", tokenizer="lit_qsum:demo"), device=CPU)


def test_unknown_model_type_is_a_clear_error() -> None:
    with pytest.raises(UserInputError, match="unknown model_type"):
        load_model(ModelSpec(model_config={"model_type": "nosuchmodel"}, tokenizer="lit_qsum:demo"), device=CPU)


def test_non_summarization_model_is_rejected(tmp_path) -> None:
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(UserInputError, match="neither a seq2seq model"):
        load_model(ModelSpec(model_name_or_path=str(tmp_path), tokenizer="lit_qsum:demo"), device=CPU)


def test_init_seed_fixes_the_lora_init() -> None:
    def lora_a(seed: int) -> torch.Tensor:
        spec = ModelSpec(model_config=TINY["t5"], tokenizer="lit_qsum:demo", backend="lora", init_seed=seed)
        model = load_model(spec, device=CPU).model
        return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(lora_a(3), lora_a(3))
    assert not torch.equal(lora_a(3), lora_a(4))


def test_cpu_qlora_keeps_the_trainable_4bit_layout_through_eval() -> None:
    """bitsandbytes would repack weights for CPU inference on an eval forward, breaking later backward passes."""
    import torch
    from bitsandbytes.nn import Linear4bit

    from lit_qsum.backends.loader import ModelSpec, load_model

    spec = ModelSpec(model_config={"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4,
                                   "num_layers": 1, "num_decoder_layers": 1},
                     tokenizer="lit_qsum:demo", backend="qlora")
    model = load_model(spec, device=torch.device("cpu")).model
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.randint(5, 100, (2, 8))
    model.eval()
    with torch.inference_mode():
        model(input_ids=ids, labels=ids)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_random_init_is_saved_whole_on_a_process_that_is_not_rank_zero(tmp_path, monkeypatch) -> None:
    # transformers 5's save_pretrained writes no config or weights on a torch.distributed rank other than 0; any DDP
    # rank may be the one that builds the cached random-init model, and the others then load what it wrote
    from transformers.distributed import mixin  # noqa: PLC0415

    from lit_qsum.backends import hf  # noqa: PLC0415
    from lit_qsum.data.tokenizer import load_tokenizer  # noqa: PLC0415

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    tokenizer = load_tokenizer("lit_qsum:demo")
    config = hf.config_from_dict(TINY["t5"], tokenizer)
    path = hf.materialize_random_init(config, seed=3, tokenizer=tokenizer)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    model = hf.load_base_model(str(path), config, quantize=None, dtype=torch.float32, device=torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        reference = type(model)(config)
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), name


def test_auto_skips_unsloth_on_several_gpus_and_says_why() -> None:
    spec = ModelSpec(model_config=TINY["llama"], tokenizer="lit_qsum:demo", backend="auto")
    loaded = load_model(spec, device=CPU, num_devices=2)  # what the module passes: trainer.world_size
    assert loaded.decision.backend != "unsloth"
    assert any("Unsloth runs on one GPU only, this run uses 2 devices" in r for r in loaded.decision.reasons)


@needs_bnb
def test_the_base_loads_on_load_device_while_device_decides(monkeypatch) -> None:
    """``load_device`` (FSDP's ``load_on_cpu``) is where the base is loaded and quantized; the backend and compute dtype
    still follow ``device``. On a GPU machine FSDP then moves each unit over (``tests/distributed/test_load_on_cpu_cuda.py``)."""
    from lit_qsum.backends import hf  # noqa: PLC0415

    seen = []
    original = hf.load_base_model

    def recording(path, config, *, quantize, dtype, device):
        seen.append((device, quantize is not None))
        return original(path, config, quantize=quantize, dtype=dtype, device=CPU)

    monkeypatch.setattr(hf, "load_base_model", recording)
    spec = ModelSpec(model_config=TINY["t5"], tokenizer="lit_qsum:demo", backend="qlora")
    loaded = load_model(spec, device=CPU, load_device=torch.device("meta"))
    assert seen == [(torch.device("meta"), True)]  # the 4-bit base went where load_device said
    assert loaded.decision.backend == "qlora" and loaded.compute_dtype == torch.float32  # decided for the CPU

