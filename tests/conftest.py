"""Shared test setup: every test gets its own random-init cache, none may write into the checkout's outputs/, and GPU
tests skip without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import outputs_guard

CHECKOUT_OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"

# no test may reach a model hub: a stray lookup fails at once instead of hanging on timeouts
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # one cache per session: random-init checkpoints are cheap to reuse and must not touch ~/.cache
    monkeypatch.setenv("LIT_QSUM_CACHE", str(tmp_path_factory.getbasetemp() / "lit_qsum_cache"))


@pytest.fixture(autouse=True)
def _checkout_outputs_untouched(request: pytest.FixtureRequest) -> None:
    # configs write under ./outputs/<config>: a test that runs the CLI from the checkout replaced the user's runs there
    before = outputs_guard.snapshot(CHECKOUT_OUTPUTS)
    yield
    changed = outputs_guard.changes(before, outputs_guard.snapshot(CHECKOUT_OUTPUTS))
    if changed:
        pytest.fail(f"{request.node.nodeid} wrote into the checkout's outputs/ ({', '.join(changed[:3])}): run the CLI "
                    "from a temporary folder (monkeypatch.chdir(tmp_path)) or give it temporary paths", pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
