"""Checkpoint files written atomically, each with a peft adapter folder beside it.

``epoch=1-step=40.ckpt`` holds the trainable weights and the training state (optimizer, schedule,
loops, callbacks, data position) for ``--ckpt_path`` resumes; ``epoch=1-step=40.adapter/`` holds the
same LoRA weights in peft's format, for ``PeftModel.from_pretrained`` or ``lit-qsum export``. Both are
written to a temporary name and renamed, so a kill mid-save never leaves a broken checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import save_file
from typing_extensions import override

from lit_qsum.atomic_io import atomic_file, new_temp_dir, publish_dir
from lit_qsum.errors import UserInputError


def adapter_dir(checkpoint_path: _PATH) -> Path:
    """The peft adapter folder that belongs to a ``.ckpt`` file."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".adapter")


def save_adapter(adapter: dict[str, Any], target: Path) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` to a temp folder, then swap it in."""
    tmp = new_temp_dir(target)
    try:
        adapter["config"].save_pretrained(str(tmp))
        save_file(adapter["state_dict"], str(tmp / "adapter_model.safetensors"))
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class AdapterCheckpointIO(TorchCheckpointIO):
    """Atomic ``.ckpt`` saves plus a peft adapter folder beside each (see module docstring)."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        adapter = checkpoint.pop("peft_adapter", None)
        target = Path(path)
        try:
            with atomic_file(target) as handle:
                torch.save(checkpoint, handle)
            if adapter is not None:
                save_adapter(adapter, adapter_dir(target))
        except OSError as err:  # disk full, permissions: the previous checkpoint is still intact
            raise UserInputError(
                f"could not write checkpoint {target}: {err.strerror or err}. Free disk space or move the "
                "checkpoints: set init_args.dirpath of the config's ModelCheckpoint callbacks (--trainer.callbacks) "
                "to a writable folder (--trainer.default_root_dir moves only checkpoints without a dirpath); "
                "the previous checkpoint in that folder is unchanged."
            ) from err

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        shutil.rmtree(adapter_dir(path), ignore_errors=True)
