"""A checkpoint and its adapter folder are one unit, whatever point of a save a kill lands on (issue #12.7).

Each save is killed for real (a forked child SIGKILLs itself before its n-th rename), then: the adapter folder that
plain ``PeftModel.from_pretrained`` would load is either the one saved with the ``.ckpt`` beside it or absent, never
an older save's; and ``repair_checkpoint_folder`` (run when a fit opens the run) puts the right folder back and
removes every temp file and folder the kill left.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

from lit_qsum.checkpoint_io import AdapterCheckpointIO, adapter_dir, repair_checkpoint_folder


def checkpoint(step: int) -> dict:
    weight = torch.full((2, 4), float(step))
    return {
        "global_step": step,
        "state_dict": {"model.base_model.model.q.lora_A.default.weight": weight},
        "peft_adapter": {"config": LoraConfig(r=2, target_modules=["q"]),
                         "state_dict": {"base_model.model.q.lora_A.weight": weight.clone()}},
    }


def save_killed_before_rename(path: Path, step: int, rename: int) -> int:
    """Save ``checkpoint(step)`` to ``path`` in a forked child that SIGKILLs itself before its ``rename``-th rename."""
    pid = os.fork()
    if pid == 0:  # the child: nothing below may return into pytest
        try:
            count = [0]
            real = {name: getattr(os, name) for name in ("rename", "replace")}

            def counting(name):
                def call(*args, **kwargs):
                    count[0] += 1
                    if count[0] == rename:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real[name](*args, **kwargs)
                return call

            os.rename, os.replace = counting("rename"), counting("replace")
            AdapterCheckpointIO().save_checkpoint(checkpoint(step), path)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def adapter_step(folder: Path) -> float | None:
    weights = folder / "adapter_model.safetensors"
    return float(load_file(weights)["base_model.model.q.lora_A.weight"][0, 0]) if weights.exists() else None


def ckpt_step(path: Path) -> float:
    return float(torch.load(path, weights_only=True)["state_dict"]["model.base_model.model.q.lora_A.default.weight"][0, 0])


@pytest.mark.parametrize("rename", [1, 2, 3, 4])  # 1: old adapter aside, 2: .ckpt in place, 3: adapter in place, 4: none
def test_a_kill_at_any_point_of_a_save_never_pairs_a_checkpoint_with_another_saves_adapter(tmp_path: Path, rename: int) -> None:
    path = tmp_path / "last.ckpt"
    AdapterCheckpointIO().save_checkpoint(checkpoint(1), path)
    status = save_killed_before_rename(path, 2, rename)
    assert os.WIFSIGNALED(status) == (rename <= 3)
    folder = adapter_dir(path)
    step = ckpt_step(path)
    assert adapter_step(folder) in (step, None), "the adapter beside last.ckpt belongs to another save"
    notes = repair_checkpoint_folder(tmp_path)
    assert adapter_step(folder) == step == (1.0 if rename <= 2 else 2.0), notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.adapter", "last.ckpt"]  # every leftover removed
    AdapterCheckpointIO().save_checkpoint(checkpoint(3), path)  # and the next save works as usual
    assert ckpt_step(path) == adapter_step(folder) == 3.0


def test_an_adapter_folder_of_another_save_is_replaced_by_the_right_one_or_removed(tmp_path: Path) -> None:
    io = AdapterCheckpointIO()
    io.save_checkpoint(checkpoint(1), tmp_path / "a.ckpt")
    io.save_checkpoint(checkpoint(2), tmp_path / "b.ckpt")
    os.replace(tmp_path / "b.ckpt", tmp_path / "a.ckpt")  # a.ckpt is now step 2, beside a.adapter/ of step 1
    os.rename(adapter_dir(tmp_path / "b.ckpt"), tmp_path / ".b.adapter.old-x")  # and step 2's adapter is a leftover
    assert repair_checkpoint_folder(tmp_path) == [f"{tmp_path / 'a.adapter'} restored from a save that was cut short "
                                                  "(it belongs to a.ckpt)"]
    assert adapter_step(tmp_path / "a.adapter") == 2.0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.adapter", "a.ckpt"]
    io.save_checkpoint(checkpoint(3), tmp_path / "c.ckpt")
    os.replace(tmp_path / "c.ckpt", tmp_path / "a.ckpt")  # step 3, and nothing holds its adapter any more
    assert repair_checkpoint_folder(tmp_path) == [
        f"{tmp_path / 'a.adapter'} removed: it held another save's weights than a.ckpt; `lit-qsum export --ckpt_path "
        f"{tmp_path / 'a.ckpt'} --merge false` writes this checkpoint's adapter"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # c.adapter/ had no .ckpt left: removed too
