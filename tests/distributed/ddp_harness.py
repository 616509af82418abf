"""The two-process CPU harness of tests/distributed: run the CLI on the demo + ``ddp_cpu.yaml`` configs, read what
each rank recorded (``recorder.py``). Shared by test_ddp.py, test_fsdp.py and test_multi_gpu_cuda.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
REPO = HERE.parents[1]
CONFIG = ["--config", str(REPO / "configs" / "demo.yaml"), "--config", str(HERE / "ddp_cpu.yaml")]
ONE_PROCESS = ["--trainer.devices", "1", "--trainer.strategy", "auto"]
N_TRAIN, N_EVAL, WORLD = 37, 9, 2


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
