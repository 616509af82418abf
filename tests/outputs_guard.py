"""What a test changed in the checkout's ``outputs/``: tests must work in temporary folders (issue #13.6).

Folders are compared by their modification time, which changes whenever an entry inside is created, removed or
renamed into place, as every checkpoint, log, config and predictions file is; so one ``stat`` per folder suffices.
"""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, int]:
    """Every folder under ``root`` (``root`` included) with its modification time; empty if ``root`` is absent."""
    if not root.is_dir():
        return {}
    return {folder: os.stat(folder).st_mtime_ns for folder, _, _ in os.walk(root)}


def changes(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """The folders created, removed or written into between two snapshots."""
    return sorted(folder for folder in before.keys() | after.keys() if before.get(folder) != after.get(folder))
