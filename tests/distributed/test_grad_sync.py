"""The per-step gradient all-reduce and agreement, on two gloo processes: means and maxima are what they should be."""

from __future__ import annotations

import torch
import torch.distributed as dist

import ddp_harness as ddp
from lit_qsum.distributed import grad_sync


def _worker(rank: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
        c = torch.nn.Parameter(torch.zeros(1))  # no gradient on rank 1: counts as zeros
        a.grad = torch.full((3,), float(rank + 1))
        b.grad = torch.full((2, 2), 10.0 * (rank + 1), dtype=torch.float64)
        c.grad = torch.ones(1) * 4 if rank == 0 else None
        grad_sync.all_reduce_grads([a, b, c])
        agreed = grad_sync.agree([torch.tensor(rank), -float("inf") if rank == 0 else -2.0], torch.device("cpu"))
        results[rank] = (a.grad.tolist(), b.grad.tolist(), c.grad.tolist(), agreed)
    finally:
        dist.destroy_process_group()


def _flat_worker(rank: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.zeros(2, 2))
        a.grad = torch.full((3,), float(rank + 1))  # kept by flat_grads
        buffers = grad_sync.flat_grads([a, b])
        (a * 0).sum().backward()  # autograd adds into the views in place
        b.grad.add_(10.0 * (rank + 1))
        grads = [a.grad, b.grad]
        grad_sync.all_reduce_grads([a, b])
        results[rank] = (a.grad.tolist(), b.grad.tolist(), buffers[torch.float32].tolist(),
                         all(p.grad is g for p, g in zip((a, b), grads)))
    finally:
        dist.destroy_process_group()


def test_flat_gradients_are_reduced_where_they_lie() -> None:
    results = ddp.spawn_pair(_flat_worker, start_method="fork")
    for rank in (0, 1):
        a, b, flat, same_tensors = results[rank]
        assert a == [1.5] * 3 and b == [[15.0, 15.0], [15.0, 15.0]]
        assert flat == [1.5] * 3 + [15.0] * 4  # the buffer itself was reduced: the gradients are its views
        assert same_tensors


def test_flat_grads_lays_gradients_out_as_views_of_one_buffer_per_dtype() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))
    c = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b.grad = torch.arange(4.0)
    buffers = grad_sync.flat_grads([a, b, c])
    assert set(buffers) == {torch.float32, torch.float64}
    assert buffers[torch.float32].tolist() == [0.0] * 6 + [0.0, 1.0, 2.0, 3.0]
    assert grad_sync._shared_buffer([a, b]).data_ptr() == buffers[torch.float32].data_ptr()
    assert grad_sync._shared_buffer([b, a]) is None  # not in buffer order
    a.grad = a.grad.clone()  # replaced (an OOM rollback): no longer one buffer
    assert grad_sync._shared_buffer([a, b]) is None


def test_all_reduce_averages_each_dtype_and_agree_takes_the_max() -> None:
    results = ddp.spawn_pair(_worker, start_method="fork")
    for rank in (0, 1):
        a, b, c, agreed = results[rank]
        assert a == [1.5] * 3
        assert b == [[15.0, 15.0], [15.0, 15.0]]
        assert c == [2.0]
        assert agreed == [1.0, -2.0]  # any rank's NaN count; minus the smallest pending micro-batch


def test_agree_without_a_process_group_is_local() -> None:
    assert grad_sync.agree([torch.tensor(3), 5.0], torch.device("cpu")) == [3.0, 5.0]
