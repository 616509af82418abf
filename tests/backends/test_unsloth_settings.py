"""Unsloth gets every setting it can honour and stops on the others (unsloth itself is faked: it needs a GPU)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from lit_qsum.backends.choice import choose_backend
from lit_qsum.backends.probe import EnvFacts
from lit_qsum.backends.unsloth_backend import load_unsloth, unsloth_setting_blockers
from lit_qsum.errors import UserInputError
from lit_qsum.settings import LoraSettings, QuantizationSettings

GPU_BOX = EnvFacts(  # a machine where Unsloth runs
    os="Linux", python="3.11", torch="2.13", cuda_available=True, cuda_version="12.4", gpu_name="RTX 4080",
    gpu_total_gib=16.0, compute_capability=(8, 9), bf16_supported=True, num_gpus=1,
    bitsandbytes_version="0.50.2", bitsandbytes_works=True, bitsandbytes_error=None, unsloth_version="2026.10.9",
)


@pytest.mark.parametrize("change, flag", [
    ({"bnb_4bit_quant_type": "fp4"}, "--model.quantization.bnb_4bit_quant_type fp4"),
    ({"bnb_4bit_use_double_quant": False}, "--model.quantization.bnb_4bit_use_double_quant false"),
    ({"bnb_4bit_quant_storage": "bfloat16"}, "--model.quantization.bnb_4bit_quant_storage bfloat16"),
])
def test_quantization_unsloth_cannot_honour_rules_it_out_by_name(change: dict, flag: str) -> None:
    blockers = unsloth_setting_blockers(LoraSettings(), QuantizationSettings(**change))
    assert len(blockers) == 1 and blockers[0].startswith(flag)

    def decide(requested: str):
        return choose_backend(requested, GPU_BOX, model_type="llama", is_encoder_decoder=False, device_type="cuda",
                              unsloth_settings=blockers)

    auto = decide("auto")  # auto takes peft + bitsandbytes, which honour it, and says why
    assert auto.backend == "qlora" and any(flag in reason for reason in auto.reasons)
    with pytest.raises(UserInputError, match=flag):
        decide("unsloth")
    assert unsloth_setting_blockers(LoraSettings(), QuantizationSettings(load_in_4bit=False, **change)) == []


class _FakeFastLanguageModel:
    """Records what lit-qsum passes; ``drop`` names kwargs a (hypothetical) unsloth version ignores."""

    calls: dict = {}
    drop: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, **kwargs):
        cls.calls["from_pretrained"] = kwargs
        return SimpleNamespace(config=SimpleNamespace(model_type="llama")), "tokenizer"

    @classmethod
    def get_peft_model(cls, model, **kwargs):
        cls.calls["get_peft_model"] = kwargs
        applied = {k: kwargs.get(k) or {} for k in ("rank_pattern", "alpha_pattern") if k not in cls.drop}
        model.peft_config = {"default": SimpleNamespace(**applied)}
        return model


def _load(lora: LoraSettings):
    return load_unsloth("base", lora=lora, quant=QuantizationSettings(), dtype=torch.bfloat16, max_seq_length=512,
                        gradient_checkpointing=True, seed=3)


def test_unsloth_gets_the_lora_patterns_and_a_dropped_one_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "unsloth", SimpleNamespace(FastLanguageModel=_FakeFastLanguageModel))
    lora = LoraSettings(rank=8, alpha=16, target_modules=["q_proj"], rank_pattern={"q_proj": 4},
                        alpha_pattern={"q_proj": 32})
    _load(lora)
    passed = _FakeFastLanguageModel.calls["get_peft_model"]
    assert passed["rank_pattern"] == {"q_proj": 4} and passed["alpha_pattern"] == {"q_proj": 32}
    assert passed["r"] == 8 and passed["lora_alpha"] == 16
    assert _FakeFastLanguageModel.calls["from_pretrained"]["dtype"] is torch.bfloat16  # the compute dtype

    monkeypatch.setattr(_FakeFastLanguageModel, "drop", ("alpha_pattern",))
    with pytest.raises(UserInputError, match="--model.lora.alpha_pattern: this unsloth version did not apply it"):
        _load(lora)


def test_env_report_gives_the_same_reason_as_fit(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from lit_qsum.env_report import env_command

    config = tmp_path / "fp4.yaml"
    config.write_text("model:\n  model_config: {model_type: llama}\n  quantization: {bnb_4bit_quant_type: fp4}\n")
    env_command(["--config", str(config), "--device", "cpu"])
    assert "not unsloth: --model.quantization.bnb_4bit_quant_type fp4: Unsloth loads" in capsys.readouterr().out
