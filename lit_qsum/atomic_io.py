"""Write-then-rename file output: a crash or kill mid-write never leaves a half-written file behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _default_mode(directory: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_file(
    path: Path, mode: str = "wb", before_replace: Callable[[], None] | None = None, **open_kwargs: object
) -> Iterator[IO]:
    """Yield a temp file beside ``path``; on success fsync it and rename it over ``path``, else delete it.

    ``before_replace`` runs once the temp file is complete and synced, just before the rename (the checkpoint
    IO moves the old adapter folder aside there, so the window without one is as short as it can be).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode(directory=False))  # mkstemp makes 0600; give the file normal permissions
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_temp_dir(target: Path) -> Path:
    """An empty folder beside ``target`` to fill before ``publish_dir`` swaps it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(tmp, _default_mode(directory=True))
    return tmp


def move_aside(target: Path) -> Path | None:
    """Rename ``target`` to a unique hidden name beside it (``.name.old-<random>``); None if it does not exist.

    Unique, so two writers (or a writer and the leftovers of a killed one) never race for one fixed name.
    """
    if not target.exists():
        return None
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    target.rename(old)
    return old


def publish_dir(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the filled ``tmp`` folder; the old one is removed only once the new one is in place."""
    for child in tmp.iterdir():
        os.chmod(child, _default_mode(directory=child.is_dir()))
    old = move_aside(target)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
