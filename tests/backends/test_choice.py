"""Every branch of the backend decision, as a pure function of faked machine facts."""

from __future__ import annotations

import dataclasses

import pytest

from lit_qsum.backends.choice import choose_backend
from lit_qsum.backends.probe import EnvFacts, probe_environment
from lit_qsum.errors import UserInputError

GPU_BOX = EnvFacts(
    os="Linux", python="3.11", torch="2.13", cuda_available=True, cuda_version="12.4", gpu_name="RTX 4080",
    gpu_total_gib=16.0, compute_capability=(8, 9), bf16_supported=True, num_gpus=1,
    bitsandbytes_version="0.50.2", bitsandbytes_works=True, bitsandbytes_error=None, unsloth_version="2026.10.9",
)


def facts(**changes) -> EnvFacts:
    return dataclasses.replace(GPU_BOX, **changes)


def decide(requested="auto", f=GPU_BOX, model_type="llama", enc_dec=False, device="cuda", devices=1):
    return choose_backend(requested, f, model_type=model_type, is_encoder_decoder=enc_dec, device_type=device,
                          num_devices=devices)


def test_auto_picks_unsloth_for_llama_on_a_capable_gpu():
    d = decide()
    assert d.backend == "unsloth"
    assert "RTX 4080" in d.report()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"os": "Windows"}, "needs Linux"),
        ({"cuda_version": "11.7"}, "CUDA >= 11.8"),
        ({"gpu_total_gib": 4.0}, ">= 6 GB"),
        ({"unsloth_version": None}, "not installed"),
    ],
)
def test_each_unsloth_requirement_falls_back_to_qlora_with_its_reason(change, needle):
    d = decide(f=facts(**change))
    assert d.backend == "qlora"
    assert any(needle in r for r in d.reasons), d.reasons


def test_cpu_training_never_gets_unsloth():
    d = decide(device="cpu")
    assert d.backend == "qlora"
    assert any("CUDA GPU" in r for r in d.reasons)


def test_encoder_decoder_auto_falls_back_with_the_message():
    d = decide(model_type="t5", enc_dec=True)
    assert d.backend == "qlora"
    assert any("does not support encoder-decoder" in r for r in d.reasons)


def test_unsupported_decoder_architecture_is_named():
    d = decide(model_type="gpt2")
    assert d.backend == "qlora"
    assert any("'gpt2' is not one Unsloth supports" in r for r in d.reasons)


def test_several_gpus_skip_unsloth():
    d = decide(devices=2)
    assert d.backend == "qlora"
    assert any("one GPU only" in r for r in d.reasons)


def test_forced_unsloth_with_t5_stops_with_the_message():
    with pytest.raises(UserInputError, match="does not support encoder-decoder"):
        decide("unsloth", model_type="t5", enc_dec=True)


def test_forced_unsloth_without_the_package_stops():
    with pytest.raises(UserInputError, match="not installed"):
        decide("unsloth", f=facts(unsloth_version=None))


def test_no_bitsandbytes_auto_gives_lora():
    d = decide(f=facts(unsloth_version=None, bitsandbytes_works=False, bitsandbytes_error="bitsandbytes is not installed"))
    assert d.backend == "lora"
    assert any("not qlora" in r for r in d.reasons)


def test_forced_qlora_without_bitsandbytes_stops():
    with pytest.raises(UserInputError, match="--model.backend qlora can't run here"):
        decide("qlora", f=facts(bitsandbytes_works=False, bitsandbytes_error="bitsandbytes is not installed"))


@pytest.mark.parametrize("requested", ["lora", "full"])
def test_lora_and_full_are_taken_as_asked(requested):
    assert decide(requested).backend == requested


def test_real_probe_on_this_machine_is_consistent():
    f = probe_environment("cpu")
    assert f.cuda_available == (f.num_gpus > 0)
    assert f.bitsandbytes_works == (f.bitsandbytes_error is None)
    d = choose_backend("auto", f, model_type="t5", is_encoder_decoder=True, device_type="cpu")
    assert d.backend == ("qlora" if f.bitsandbytes_works else "lora")
