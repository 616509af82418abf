"""The two-process CPU harness of tests/distributed: run the CLI on the demo + ``ddp_cpu.yaml`` configs, read what
each rank recorded (``recorder.py``), or run a function on two gloo processes (``spawn_pair``). Shared by the tests
of this folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

HERE = Path(__file__).parent
REPO = HERE.parents[1]
CONFIG = ["--config", str(REPO / "configs" / "demo.yaml"), "--config", str(HERE / "ddp_cpu.yaml")]
ONE_PROCESS = ["--trainer.devices", "1", "--trainer.strategy", "auto"]
N_TRAIN, N_EVAL, WORLD = 37, 9, 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_pair(worker, *args, start_method: str = "spawn") -> dict:
    """``worker(rank, port, results, *args)`` on 2 processes sharing a free port; returns ``results`` by rank."""
    results = mp.Manager().dict()
    mp.start_processes(worker, args=(free_port(), results, *args), nprocs=2, start_method=start_method)
    return dict(results)


def run(cwd: Path, command: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``command`` (fit/predict) through ``run_cli.py`` with the demo + ``ddp_cpu.yaml`` configs, then ``args``."""
    cwd.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "FAKE_GENERATE": "1", "WATCHDOG_S": "240", **env}
    done = subprocess.run([sys.executable, str(HERE / "run_cli.py"), command, *CONFIG, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "💡 Tip" not in done.stderr + done.stdout  # Lightning's cloud advertisements are filtered out
    return done


def records(cwd: Path, stage: str = "fit") -> list[dict]:
    return [json.loads((cwd / "record" / f"{stage}-rank{r}.json").read_text()) for r in range(WORLD)
            if (cwd / "record" / f"{stage}-rank{r}.json").exists()]


def weights(cwd: Path, rank: int, stage: str = "fit") -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(cwd / "record" / f"{stage}-rank{rank}.pt", weights_only=True)
