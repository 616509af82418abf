"""Run the ``lit-qsum`` command in-process and return what a user would see when it stops with an error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lit_qsum.cli import main


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path, *, stdout: bool = True
) -> str:
    """``main(args)`` from ``cwd``; it must exit with status 2 (a user error). Returns stderr (and stdout)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    return captured.err + (captured.out if stdout else "")
