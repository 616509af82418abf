"""Checkpoint files written atomically, each with the peft adapter folder that belongs to it.

``epoch=1-step=40.ckpt`` holds the trainable weights and the training state (optimizer, schedule,
loops, callbacks, data position) for ``--ckpt_path`` resumes; ``epoch=1-step=40.adapter/`` holds the
same LoRA weights in peft's format, for ``PeftModel.from_pretrained`` or ``lit-qsum export``.

The two are one unit: each save draws a random id, stored in the ``.ckpt`` and in the adapter's
safetensors metadata. Both are written to temporary names first; then the old adapter folder is moved
aside, the ``.ckpt`` renamed into place, the new adapter folder renamed into place, the old one deleted.
So a kill at any point leaves an adapter folder that matches its ``.ckpt`` or none at all (plain peft then
fails loudly instead of loading the previous save's weights), and ``repair_checkpoint_folder`` puts the
matching folder back from what the killed save left behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import safe_open
from safetensors.torch import save_file
from typing_extensions import override

from lit_qsum.atomic_io import atomic_file, move_aside, new_temp_dir
from lit_qsum.checkpoint_contents import ADAPTER_KEY
from lit_qsum.errors import UserInputError

SAVE_ID = "lit_qsum_save_id"  # top-level key of the .ckpt and metadata key of adapter_model.safetensors
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_dir(checkpoint_path: _PATH) -> Path:
    """The peft adapter folder that belongs to a ``.ckpt`` file."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".adapter")


def adapter_save_id(folder: Path) -> str | None:
    """The save id an adapter folder was written with; None if it has none or can't be read."""
    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as weights:
            return (weights.metadata() or {}).get(SAVE_ID)
    except Exception:  # noqa: BLE001 - missing, truncated or foreign files all mean "no id"
        return None


def checkpoint_save_id(path: Path) -> str | None:
    """The save id of a ``.ckpt`` (memory-mapped: the tensors are not read); None if it has none or is unreadable."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint is reported where it is loaded, not here
        return None
    return checkpoint.get(SAVE_ID) if isinstance(checkpoint, dict) else None


def write_adapter(adapter: dict[str, Any], folder: Path, save_id: str, global_step: int | None = None) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (with the save id in its metadata), synced to disk."""
    adapter["config"].save_pretrained(str(folder))
    metadata = {SAVE_ID: save_id, "global_step": str(global_step)}
    save_file(adapter["state_dict"], str(folder / ADAPTER_WEIGHTS), metadata=metadata)
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


class AdapterCheckpointIO(TorchCheckpointIO):
    """Atomic ``.ckpt`` saves plus the peft adapter folder that belongs to each (see module docstring)."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        adapter = checkpoint.pop(ADAPTER_KEY, None)
        target = Path(path)
        folder = adapter_dir(target)
        new_adapter: Path | None = None
        old_adapter: Path | None = None
        replaced = False

        def set_old_adapter_aside() -> None:
            nonlocal old_adapter
            old_adapter = move_aside(folder)

        try:
            if adapter is not None:
                checkpoint[SAVE_ID] = save_id = uuid.uuid4().hex
                new_adapter = new_temp_dir(folder)
                write_adapter(adapter, new_adapter, save_id, checkpoint.get("global_step"))
            with atomic_file(target, before_replace=set_old_adapter_aside if adapter is not None else None) as handle:
                torch.save(checkpoint, handle)
            replaced = True
            if new_adapter is not None:
                new_adapter.rename(folder)
                new_adapter = None
        except BaseException as err:
            if not replaced and old_adapter is not None and not folder.exists():
                old_adapter.rename(folder)  # the previous .ckpt is still in place: so is its adapter
                old_adapter = None
            if replaced and new_adapter is not None:
                new_adapter = None  # complete and matching the new .ckpt: repair_checkpoint_folder publishes it
            if isinstance(err, OSError):  # disk full, permissions: the previous checkpoint is still intact
                raise UserInputError(
                    f"could not write checkpoint {target}: {err.strerror or err}. Free disk space or point "
                    "--trainer.default_root_dir somewhere writable (a ModelCheckpoint callback whose config sets "
                    "init_args.dirpath of the config's ModelCheckpoint callbacks writes there instead); the previous "
                    "checkpoint in that folder is unchanged."
                ) from err
            raise
        finally:
            if new_adapter is not None:
                shutil.rmtree(new_adapter, ignore_errors=True)
            if old_adapter is not None:
                shutil.rmtree(old_adapter, ignore_errors=True)

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        shutil.rmtree(adapter_dir(path), ignore_errors=True)


def _is_leftover(path: Path) -> bool:
    """Temp files and folders of saves that were killed: ``.X.ckpt.*.tmp``, ``.X.adapter.*`` (never ``.lock``)."""
    name = path.name
    return name.startswith(".") and ((".ckpt." in name and name.endswith(".tmp")) or ".adapter." in name)


def repair_checkpoint_folder(folder: Path) -> list[str]:
    """Give every ``X.ckpt`` in ``folder`` the adapter folder saved with it and delete what killed saves left.

    Call it only while no process saves into ``folder`` (``lit_qsum.runs`` holds the run's lock). Returns one
    line per adapter folder restored or removed.
    """
    if not folder.is_dir():
        return []
    notes = []
    leftovers = [p for p in folder.iterdir() if _is_leftover(p)]
    for ckpt in sorted(folder.glob("*.ckpt")):
        wanted = checkpoint_save_id(ckpt)
        target = adapter_dir(ckpt)
        if wanted is None or adapter_save_id(target) == wanted:
            continue  # in order, or a checkpoint without adapter (full fine-tuning, or saved before save ids)
        # save ids are unique: a leftover folder with this one is this checkpoint's adapter, whatever its name
        match = next((p for p in leftovers if p.is_dir() and adapter_save_id(p) == wanted), None)
        stale = move_aside(target)  # another save's weights never stay where plain peft would load them
        if stale is not None:
            leftovers.append(stale)
        if match is not None:
            match.rename(target)
            leftovers.remove(match)
            notes.append(f"{target} restored from a save that was cut short (it belongs to {ckpt.name})")
        elif stale is not None:
            notes.append(f"{target} removed: it held another save's weights than {ckpt.name}; "
                         f"`lit-qsum export --ckpt_path {ckpt} --merge false` writes this checkpoint's adapter")
    for orphan in folder.glob("*.adapter"):  # its .ckpt was deleted (top-k) by a save that was cut short
        if not orphan.with_suffix(".ckpt").exists() and adapter_save_id(orphan) is not None:
            leftovers.append(orphan)
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return notes
