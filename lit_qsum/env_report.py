"""``lit-qsum env``: what this machine offers and which backend a config would get, without training."""

from __future__ import annotations

import argparse

from lit_qsum.backends.choice import choose_backend
from lit_qsum.backends.hf import config_for, task_of
from lit_qsum.backends.probe import probe_environment
from lit_qsum.backends.unsloth_backend import unsloth_setting_blockers
from lit_qsum.config_checks import read_config_file
from lit_qsum.errors import UserInputError
from lit_qsum.settings import LoraSettings, QuantizationSettings


def _model_section(config_path: str | None) -> dict:
    if config_path is None:
        return {}
    return read_config_file(config_path).get("model") or {}


def _model_type(model: dict) -> tuple[str, bool] | None:
    config = config_for(model.get("model_config"), model.get("model_name_or_path"))
    return None if config is None else (config.model_type, task_of(config) == "seq2seq")


def _unsloth_settings(model: dict) -> list[str]:
    """The config's LoRA/quantization settings Unsloth can't honour, as fit would find them."""
    try:
        lora = LoraSettings(**(model.get("lora") or {}))
        quant = QuantizationSettings(**(model.get("quantization") or {}))
    except TypeError as err:  # an unknown key: fit reports it with the flag; here the decision is what matters
        raise UserInputError(f"--config: model.lora or model.quantization: {err}") from err
    return unsloth_setting_blockers(lora, quant)


def env_command(argv: list[str]) -> None:
    """Print the environment report; with ``--config``, also the backend decision for that model."""
    parser = argparse.ArgumentParser(prog="lit-qsum env", description=__doc__)
    parser.add_argument("--config", help="a lit-qsum YAML whose model section to decide the backend for")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="device to decide for (default: cuda if present)")
    parser.add_argument("--devices", type=int, default=1, help="number of devices the run would use")
    ns = parser.parse_args(argv)
    facts = probe_environment(ns.device)
    print("lit-qsum environment")
    for key, value in facts.as_dict().items():
        print(f"  {key:22s} {value}")
    model = _model_section(ns.config)
    found = _model_type(model)
    if found is None:
        print("\n(no --config with a model given: pass one to see the backend decision)")
        return
    model_type, encoder_decoder = found
    device = ns.device or ("cuda" if facts.cuda_available else "cpu")
    try:
        decision = choose_backend(
            model.get("backend", "auto"),
            facts,
            model_type=model_type,
            is_encoder_decoder=encoder_decoder,
            device_type=device,
            num_devices=ns.devices,
            unsloth_settings=_unsloth_settings(model),
        )
    except UserInputError as err:
        print(f"\nmodel {model_type}: the requested backend can't run here:\n{err}")
        return
    print(f"\nmodel {model_type} on {device} x{ns.devices}")
    print(decision.report())
