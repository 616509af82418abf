"""``lit-qsum export``: turn a training checkpoint into a model that loads without lit-qsum.

    lit-qsum export --ckpt_path outputs/demo/checkpoints/best.ckpt --output_dir exported/demo
    lit-qsum export --ckpt_path outputs/demo/checkpoints/best.ckpt --output_dir exported/demo-adapter --merge false

The base model is rebuilt from the checkpoint's ``hyper_parameters`` (the module's own arguments, so
the same hub name, local folder or seeded random init as in training) but always UNQUANTIZED, in
``--dtype``: a QLoRA adapter is merged into the full-precision base weights, since merging into 4-bit
weights is lossy and the result would not load with plain transformers. The exported model therefore
differs from the QLoRA training model by the NF4 rounding of the base, as every QLoRA merge does.
A random-init base is rebuilt from ``model_config`` + ``init_seed``, identical only under the
transformers version that trained (its init code may change between versions).

``--merge true`` (default) writes a plain Hugging Face folder (weights, config, generation config with
the checkpoint's generation settings, tokenizer) for ``AutoModelFor{Seq2SeqLM,CausalLM}.from_pretrained``;
full fine-tuning checkpoints (``--model.backend full``) export their full weights this way.
``--merge false`` writes the peft adapter, the tokenizer, the same generation config and ``base_model.json``
naming the base; a random-init base (``--model.model_config``) has no name to download, so it is copied into
``base/``. Its printed ``load with:`` line passes that generation config to the base's ``from_pretrained``: the
base's own has no ``max_new_tokens``, and a bare ``generate()`` would stop at transformers' default of 20 tokens.
Provenance and the input format (source checkpoint, causal prompt template, generation settings) go
to ``lit_qsum_export.json`` (merged) or ``base_model.json`` (adapter).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_module
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import GenerationConfig

from lit_qsum.atomic_io import new_temp_dir, publish_dir
from lit_qsum.backends import hf
from lit_qsum.backends.loader import ModelSpec, resolve_checkpoint, tokenizer_spec
from lit_qsum.backends.peft_lora import lora_config
from lit_qsum.checkpoint_io import adapter_dir
from lit_qsum.data.tokenizer import load_tokenizer
from lit_qsum.errors import UserInputError
from lit_qsum.module import SummarizationModule
from lit_qsum.settings import GenerationSettings
from lit_qsum.writable import check_writable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_CLASS = {"seq2seq": "AutoModelForSeq2SeqLM", "causal": "AutoModelForCausalLM"}
HERE = "<this folder>"  # how the JSON written beside the weights names the export folder, wherever it moves


def export_command(argv: list[str]) -> None:
    """Parse the flags, export, print what was written."""
    parser = argparse.ArgumentParser(prog="lit-qsum export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt of lit-qsum fit (its .adapter/ folder beside it)")
    parser.add_argument("--output_dir", required=True, help="folder to write; must not exist or be empty")
    parser.add_argument("--merge", type=_flag, default=True, metavar="{true,false}",
                        help="true: a merged plain Hugging Face model (default); false: the adapter + base info")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the merged weights")
    parser.add_argument("--overwrite", type=_flag, default=False, metavar="{true,false}",
                        help="replace a non-empty --output_dir")
    ns = parser.parse_args(argv)
    written = export_checkpoint(ns.ckpt_path, ns.output_dir, merge=ns.merge, dtype=ns.dtype, overwrite=ns.overwrite)
    print(f"lit-qsum export: wrote {written}")
    total = 0
    for path in sorted(p for p in written.rglob("*") if p.is_file()):
        total += path.stat().st_size
        print(f"  {str(path.relative_to(written)):40s} {_size(path.stat().st_size)}")
    print(f"  {'total':40s} {_size(total)}")
    info = json.loads((written / ("lit_qsum_export.json" if ns.merge else "base_model.json")).read_text())
    print(f"load with: {info['load_with'].replace(HERE, str(written))}")


def export_checkpoint(
    ckpt_path: str | Path,
    output_dir: str | Path,
    *,
    merge: bool = True,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Export ``ckpt_path`` to ``output_dir`` (see the module docstring); returns the folder written."""
    ckpt, target = Path(ckpt_path), Path(output_dir)
    _check_output_dir(target, ckpt, overwrite)
    if not merge and dtype != "float32":
        raise UserInputError("--dtype applies to merged weights; with --merge false the adapter is saved as trained")
    checkpoint = _read_checkpoint(ckpt)
    backend = checkpoint["lit_qsum"]["backend"]
    if backend == "full" and not merge:
        raise UserInputError("--merge false: this checkpoint is a full fine-tune (--model.backend full): no adapter")
    module = _module_from_hparams(checkpoint["hyper_parameters"], ckpt)

    spec = module.spec
    tokenizer = load_tokenizer(tokenizer_spec(spec))
    base_path, config = resolve_checkpoint(spec, tokenizer)
    task = hf.task_of(config)
    if merge and getattr(config, "quantization_config", None):
        raise UserInputError(f"--merge true: the base {base_path!r} is stored pre-quantized, and merging into 4-bit "
                             "weights is lossy; train from its full-precision original, or use --merge false")
    model = hf.load_base_model(base_path, config, quantize=None, dtype=DTYPES[dtype], device=torch.device("cpu"))
    state = checkpoint["state_dict"]
    if backend == "full":
        _load_full_weights(model, state)
    else:
        model = _attach_adapter(model, ckpt, state, spec, task)

    tmp = new_temp_dir(target)
    try:
        info = _provenance(checkpoint, ckpt, spec, task, config.model_type, module.generation)
        if merge:
            model = model.merge_and_unload() if backend != "full" else model
            _apply_generation_settings(model.generation_config, info["generation"], tokenizer)
            model.save_pretrained(tmp)
            info["load_with"] = f"transformers.{AUTO_CLASS[task]}.from_pretrained('{HERE}')"
            (tmp / "lit_qsum_export.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        else:
            base_name = _write_adapter(model, tmp, spec, base_path)
            bundled = spec.model_config is not None
            # the base's own generation_config.json lacks lit-qsum's settings (no max_new_tokens: a bare generate()
            # stops at transformers' default max_length of 20), so the export carries them and the load line uses them
            generation = copy.deepcopy(model.get_base_model().generation_config)
            _apply_generation_settings(generation, info["generation"], tokenizer)
            generation.save_pretrained(tmp)
            if bundled:
                generation.save_pretrained(tmp / "base")
            base = (f"transformers.{AUTO_CLASS[task]}.from_pretrained('{HERE + '/base' if bundled else base_name}', "
                    f"generation_config=transformers.GenerationConfig.from_pretrained('{HERE}'))")
            info.update(base_model_name_or_path=base_name, base_bundled=bundled,
                        load_with=f"peft.PeftModel.from_pretrained({base}, '{HERE}')")
            (tmp / "base_model.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_output_dir(target: Path, ckpt: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless --overwrite) or that would swallow the checkpoint itself."""
    if target.exists() and not target.is_dir():
        raise UserInputError(f"--output_dir {target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserInputError(f"--output_dir {target}: exists and is not empty; pass --overwrite true to replace it")
    check_writable(target.parent if target.exists() else target, "--output_dir")  # built beside it, then renamed
    resolved = target.resolve()
    if resolved in ckpt.resolve().parents or resolved == adapter_dir(ckpt).resolve():
        raise UserInputError(f"--output_dir {target}: holds --ckpt_path {ckpt} or its adapter; it must not be replaced")


def _read_checkpoint(ckpt: Path) -> dict[str, Any]:
    if not ckpt.is_file():
        raise UserInputError(f"--ckpt_path {ckpt}: no such file")
    try:  # full pickle, as Lightning loads it: hyper_parameters hold plain Python objects
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise UserInputError(f"--ckpt_path {ckpt}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "lit_qsum" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserInputError(f"--ckpt_path {ckpt}: not a lit-qsum checkpoint (no 'lit_qsum'/'hyper_parameters' entry)")
    return checkpoint


def _module_from_hparams(hparams: dict[str, Any], ckpt: Path) -> SummarizationModule:
    """The module as LightningCLI built it for training (typed settings, validated); no weights are loaded."""
    kwargs = {k: v for k, v in hparams.items() if k != "_instantiator"}
    try:
        if "_instantiator" in hparams:  # saved by LightningCLI: dicts that its parser turns back into settings
            return instantiate_module(SummarizationModule, kwargs)
        return SummarizationModule(**kwargs)
    except Exception as err:  # noqa: BLE001 - jsonargparse and the constructor raise many types
        raise UserInputError(f"--ckpt_path {ckpt}: its hyper_parameters don't rebuild the model: {err}") from err


def _load_full_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserInputError(f"--ckpt_path: full weights don't fit the base (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); was the base or --model.model_config changed since training?")


def _attach_adapter(
    model: torch.nn.Module, ckpt: Path, state: dict[str, torch.Tensor], spec: ModelSpec, task: str
) -> PeftModel:
    """peft model from the ``.adapter/`` folder, else from the checkpoint's LoRA weights; both must agree."""
    folder = adapter_dir(ckpt)
    from_folder = (folder / "adapter_config.json").is_file()
    if from_folder:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    else:  # adapter folder lost or never written: the .ckpt has the same weights under the module's names
        peft_model = get_peft_model(model, lora_config(spec.lora, model, task))
    params = dict(peft_model.named_parameters())
    lora = {k.removeprefix("model."): v for k, v in state.items() if "lora_" in k}
    mismatched = sorted(set(lora) ^ {n for n in params if "lora_" in n})
    if not lora or mismatched:
        raise UserInputError(f"--ckpt_path {ckpt}: its LoRA weights don't fit the rebuilt model "
                             f"(e.g. {mismatched[:1] or 'none found'}); was --model.lora changed since training?")
    with torch.no_grad():
        for name, value in lora.items():
            if from_folder and not torch.equal(params[name].float(), value.float()):
                raise UserInputError(f"--ckpt_path {ckpt}: {folder.name}/ holds other weights than the .ckpt (a save "
                                     f"cut short?); delete {folder} to export the .ckpt's weights")
            params[name].copy_(value)
    return peft_model.eval()


def _write_adapter(peft_model: PeftModel, out: Path, spec: ModelSpec, base_path: str) -> str:
    """Adapter files as checkpoints write them; a random-init base is copied to ``base/``. Returns the base's name."""
    if spec.model_config is not None:
        shutil.copytree(base_path, out / "base")  # the materialized random init (weights + tokenizer), byte for byte
        base_name = "base"
    else:
        local = Path(spec.model_name_or_path).expanduser()
        base_name = str(local.resolve()) if local.exists() else spec.model_name_or_path
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = base_name
    config.save_pretrained(str(out))
    weights = get_peft_model_state_dict(peft_model, save_embedding_layers=False)  # "auto" may query the hub
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    return base_name


def _provenance(
    checkpoint: dict[str, Any], ckpt: Path, spec: ModelSpec, task: str, model_type: str, generation: GenerationSettings
) -> dict[str, Any]:
    """What the export came from and how its inputs must look, for ``lit_qsum_export.json`` / ``base_model.json``."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    gen = asdict(generation)
    gen["max_new_tokens"] = gen["max_new_tokens"] or int(data.get("decoder_max_len", 200))
    return {
        "source_checkpoint": str(ckpt.resolve()),
        "global_step": checkpoint.get("global_step"),
        "trained_backend": checkpoint["lit_qsum"]["backend"],
        "task": task,
        "model_type": model_type,
        "auto_class": AUTO_CLASS[task],
        "model_name_or_path": spec.model_name_or_path,
        "model_config": spec.model_config,
        "init_seed": spec.init_seed,
        "tokenizer": spec.tokenizer,
        "encoder_max_len": data.get("encoder_max_len"),
        "prompt_template": data.get("prompt_template") if task == "causal" else None,
        "generation": gen,
    }


def _apply_generation_settings(config: GenerationConfig, gen: dict[str, Any], tokenizer: Any) -> None:
    """Bake the checkpoint's generation settings in, so a bare ``generate()`` decodes as ``lit-qsum predict`` does."""
    config.do_sample = False
    config.max_new_tokens = gen["max_new_tokens"]
    config.num_beams = gen["num_beams"]
    config.pad_token_id = tokenizer.pad_token_id
    if gen["no_repeat_ngram_size"]:
        config.no_repeat_ngram_size = gen["no_repeat_ngram_size"]
    if gen["num_beams"] > 1:  # beam-only fields; transformers warns about them with greedy search
        config.length_penalty = gen["length_penalty"]
        config.early_stopping = gen["early_stopping"]


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""
