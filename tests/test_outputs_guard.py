"""The suite fails any test that writes into the checkout's outputs/ (issue #13.6; the autouse fixture in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import outputs_guard


def test_guard_sees_a_new_file_a_replaced_file_and_a_new_folder(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    (root / "demo" / "run" / "checkpoints").mkdir(parents=True)
    (root / "demo" / "run" / "config.yaml").write_text("a")
    before = outputs_guard.snapshot(root)
    assert outputs_guard.changes(before, outputs_guard.snapshot(root)) == []
    os.utime(root / "demo", ns=(1, 1))  # make a change visible whatever the file system's time resolution
    before = outputs_guard.snapshot(root)
    (root / "demo" / "config.yaml").write_text("b")  # what tests/e2e/test_cli_fit_predict.py used to write
    assert outputs_guard.changes(before, outputs_guard.snapshot(root)) == [str(root / "demo")]
    os.utime(root / "demo", ns=(1, 1))
    before = outputs_guard.snapshot(root)
    (root / "demo" / "new-run").mkdir()
    assert outputs_guard.changes(before, outputs_guard.snapshot(root)) == [str(root / "demo"),
                                                                          str(root / "demo" / "new-run")]

