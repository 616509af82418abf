"""Build Hugging Face models: by hub name or local path, or random-init from a config for offline use.

A random-init model is saved once to a cache folder and then loaded through ``from_pretrained`` like a
real checkpoint, so quantization and every later step run the same code path for both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from lit_qsum.errors import UserInputError
from lit_qsum.settings import QuantizationSettings

Task = Literal["seq2seq", "causal"]
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")
"""model_types of the T5 family: the pad token starts decoding, and float16 overflows (NaN losses)."""


def cache_dir() -> Path:
    """Where random-init checkpoints live; ``LIT_QSUM_CACHE`` overrides."""
    return Path(os.environ.get("LIT_QSUM_CACHE", Path.home() / ".cache" / "lit_qsum"))


def load_config(name_or_path: str) -> PretrainedConfig:
    """Read a checkpoint's config, turning transformers' errors into one that names the flag."""
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise UserInputError(f"--model.model_name_or_path: {name_or_path!r} does not exist")
    try:
        return AutoConfig.from_pretrained(str(path) if looks_local else name_or_path)
    except (OSError, ValueError, KeyError) as err:
        raise UserInputError(
            f"--model.model_name_or_path: can't load a model config from {name_or_path!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0]}). Give a hub name (e.g. google/flan-t5-base) "
            "or a folder with config.json; offline, use --model.model_config to build a random-init model."
        ) from err


def config_for(model_config: dict | None, model_name_or_path: str | None) -> PretrainedConfig | None:
    """The config a model would be built from, without weights (None when neither source is given).

    ``--model.model_config`` gives the class defaults of its ``model_type`` (enough to tell the task and the
    backend); ``--model.model_name_or_path`` is read from the hub or a folder (``load_config``).

    Raises:
        UserInputError: a model_config without a known model_type, or a checkpoint config that can't be read.
    """
    if model_config is not None:
        model_type = model_config.get("model_type")
        if not model_type:
            raise UserInputError("--model.model_config needs a model_type (e.g. t5, bart, llama)")
        try:
            return AutoConfig.for_model(model_type)
        except ValueError as err:
            raise UserInputError(f"--model.model_config: unknown model_type {model_type!r}") from err
    if model_name_or_path:
        return load_config(model_name_or_path)
    return None


def task_of(config: PretrainedConfig) -> Task:
    """seq2seq for encoder-decoders (T5, BART...), causal for decoder-only LMs; anything else is an error."""
    if config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False):
        return "causal"
    raise UserInputError(
        f"--model.model_name_or_path: model type {config.model_type!r} is neither a seq2seq model "
        "(T5, mT5, BART, Pegasus...) nor a causal LM (Llama, Qwen, Mistral...); lit-qsum can't train it"
    )


def config_from_dict(model_config: dict, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """A config from ``{model_type: ..., **fields}``, with vocab and special ids taken from the tokenizer."""
    fields = dict(model_config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise UserInputError("--model.model_config needs a model_type (e.g. t5, bart, llama)")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except ValueError as err:
        raise UserInputError(f"--model.model_config: unknown model_type {model_type!r}: {err}") from err
    if "vocab_size" not in fields:
        config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if getattr(config, "is_encoder_decoder", False):
        start = tokenizer.pad_token_id if model_type in T5_FAMILY else tokenizer.eos_token_id
        config.decoder_start_token_id = start
        config.bos_token_id = getattr(tokenizer, "bos_token_id", None) or start
    elif getattr(tokenizer, "bos_token_id", None) is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def materialize_random_init(
    config: PretrainedConfig,
    seed: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: torch.device | None = None,
) -> Path:
    """Save a seeded random-init model (and its tokenizer) for ``config`` once, atomically; return its folder.

    The tokenizer goes in too, so the folder is a complete checkpoint that any loader (peft, unsloth,
    plain transformers) can open by path. Several processes of one machine (DDP/FSDP ranks) take turns
    through a lock file: the first builds it, the others find it done. On a CUDA ``device`` the weights
    are drawn there (minutes faster for billion-parameter shapes); GPU and CPU draws differ, so each has
    its own cache entry.
    """
    on_gpu = device is not None and device.type == "cuda" and torch.cuda.is_available()
    key = hashlib.sha256(
        json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
        + f"|{seed}|{transformers.__version__}{'|cuda' if on_gpu else ''}".encode()
    ).hexdigest()[:16]
    target = cache_dir() / "random-init" / f"{config.model_type}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if (target / "config.json").exists():  # another process built it while this one waited
            return target
        task = task_of(config)
        auto = transformers.AutoModelForSeq2SeqLM if task == "seq2seq" else transformers.AutoModelForCausalLM
        index = (device.index if device.index is not None else torch.cuda.current_device()) if on_gpu else None
        with torch.random.fork_rng(devices=[index] if on_gpu else []), torch.device(device if on_gpu else "cpu"):
            torch.manual_seed(seed)
            model = auto.from_config(config)
        model = model.to("cpu")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            _save_checkpoint(model, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").exists():  # another machine sharing the folder may have won the race
                raise
    return target


def _save_checkpoint(model: transformers.PreTrainedModel, folder: Path) -> None:
    """What ``save_pretrained`` writes, on any rank: since transformers 5 ``save_pretrained`` silently writes no
    config or weights on a process whose torch.distributed rank is not 0, and any rank may build the model."""
    from safetensors.torch import save_model  # noqa: PLC0415

    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # shared (tied) tensors once


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes of this machine (a no-op where ``fcntl`` is missing: Windows)."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_compute_dtype(name: str, device_type: str) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA GPUs that support it, else float32."""
    if name == "auto":
        if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def bnb_config(quant: QuantizationSettings, compute_dtype: torch.dtype) -> transformers.BitsAndBytesConfig:
    """The bitsandbytes 4-bit config (NF4 + double quant by default)."""
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=getattr(torch, quant.bnb_4bit_quant_storage),
    )


def load_base_model(
    path: str,
    config: PretrainedConfig,
    *,
    quantize: transformers.BitsAndBytesConfig | None,
    dtype: torch.dtype,
    device: torch.device,
) -> transformers.PreTrainedModel:
    """``from_pretrained`` with the right Auto class; 4-bit weights are placed on ``device`` while loading."""
    auto = transformers.AutoModelForSeq2SeqLM if task_of(config) == "seq2seq" else transformers.AutoModelForCausalLM
    kwargs: dict = {"config": config, "dtype": dtype}
    if quantize is not None:
        kwargs["quantization_config"] = quantize
        # bitsandbytes quantizes as weights reach the device; Lightning's later .to(device) is then a no-op
        index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
        kwargs["device_map"] = {"": index if device.type == "cuda" else device.type}
    try:
        return auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"--model.model_name_or_path: loading weights from {path!r} failed: {type(err).__name__}: "
            f"{str(err).splitlines()[0]}"
        ) from err
