"""CPU runs use half the cores (benchmarks/results/2026-11-29-cpu-threads.md), unless OMP_NUM_THREADS says otherwise."""

from __future__ import annotations

import pytest

from lit_qsum.cpu_threads import choose_cpu_threads


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 1), (8, 4), (64, 32)])
def test_half_the_usable_cores(cores: int, expected: int) -> None:
    assert choose_cpu_threads(cores, {}) == expected


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_the_users_setting_wins(name: str) -> None:
    assert choose_cpu_threads(16, {name: "3"}) is None
