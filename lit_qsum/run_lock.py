"""The lock that keeps a run folder to one training process: ``flock`` on ``<run>/.lock``.

The kernel releases a ``flock`` when its process ends, SIGKILL included, so a killed run never leaves a stale lock;
the file stays and says who held it last (pid, host, command, since), which the error for a second process quotes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from lit_qsum.errors import UserInputError

LOCK = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock`` whose file says who holds it (pid, host, command, since)."""

    def __init__(self, folder: Path) -> None:
        """
        Args:
            folder: The run folder to lock.
        """
        self.folder = folder
        self.path = folder / LOCK
        self._fd: int | None = None

    def acquire(self, command: str, record: bool = True) -> None:
        """Take the lock or stop with one line naming the process that holds it; ``record`` writes who we are."""
        try:
            import fcntl  # noqa: PLC0415 - POSIX only
        except ImportError:  # Windows: no advisory locks through this module; run folders still keep runs apart
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise UserInputError(
                f"{self.folder} is in use by {self.holder()}: two processes training in one run folder would replace "
                "each other's checkpoints. Wait for it to end, or start a new run without --ckpt_path/--run_name"
            ) from err
        self._fd = fd
        if record:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.utime(self.path)  # marks the newest run, for --ckpt_path last/best

    def holder(self) -> str:
        """Who holds the lock, from what it wrote into the lock file."""
        try:
            info: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            return f"process {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def release(self) -> None:
        """Let go of the lock (the kernel also releases it when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
