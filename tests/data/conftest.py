"""Fixtures for the data pipeline tests (tests/conftest.py keeps every hub lookup offline)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The offline demo tokenizer, trained once per test session."""
    from lit_qsum.data.tokenizer import load_tokenizer

    return load_tokenizer("lit_qsum:demo")
