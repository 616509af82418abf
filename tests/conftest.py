"""Shared test setup: every test gets its own random-init cache, and GPU tests skip without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

# no test may reach a model hub: a stray lookup fails at once instead of hanging on timeouts
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # one cache per session: random-init checkpoints are cheap to reuse and must not touch ~/.cache
    monkeypatch.setenv("LIT_QSUM_CACHE", str(tmp_path_factory.getbasetemp() / "lit_qsum_cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
