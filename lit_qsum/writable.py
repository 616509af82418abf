"""Fail before the work, not after it: can this process create ``path``?

``os.access`` is no answer: root passes it on read-only mounts and on /proc. A real write in the nearest
folder that exists is, and so is finding a file where the path needs a folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_qsum.errors import UserInputError


def check_writable(path: str | Path, flag: str) -> None:
    """Raise a ``UserInputError`` naming ``flag`` unless ``path`` (a file or folder, existing or not) can be created."""
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing.is_dir():
        folder = existing
    elif existing == path:  # a file to replace: its folder must take the new one
        folder = path.parent
    else:
        raise UserInputError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserInputError(f"{flag} {path}: can't write in {folder} ({err.strerror or err})") from err


def check_logger_dirs(loggers: Iterable[Any]) -> None:
    """Each logger's folder (TensorBoard's ``save_dir``/``name``) can be created: Lightning makes it only after the
    model has loaded, and a failure there was a traceback."""
    for logger in loggers:
        folder = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
        if folder:
            check_writable(folder, "--trainer.logger.init_args.save_dir")
