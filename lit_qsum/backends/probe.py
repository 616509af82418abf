"""Probe the machine for what the backend choice depends on, without importing heavy optional packages.

Importing unsloth takes ~30 s and patches transformers, so its availability is read from package
metadata here; it is imported only once the choice falls on it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class EnvFacts:
    """Everything ``choose_backend`` needs to know about the machine; plain data so tests can fake it."""

    os: str
    python: str
    torch: str
    cuda_available: bool
    cuda_version: str | None
    gpu_name: str | None
    gpu_total_gib: float | None
    compute_capability: tuple[int, int] | None
    bf16_supported: bool
    num_gpus: int
    bitsandbytes_version: str | None
    bitsandbytes_works: bool
    bitsandbytes_error: str | None
    unsloth_version: str | None

    def as_dict(self) -> dict[str, object]:
        """Flat dict for logs and the TensorBoard hparams."""
        return asdict(self)


def _package_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _bitsandbytes_works(device: torch.device) -> tuple[bool, str | None]:
    """Quantize one tiny tensor on ``device``: the only reliable test that the native library loads there."""
    if _package_version("bitsandbytes") is None:
        return False, "bitsandbytes is not installed (pip install bitsandbytes)"
    try:
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(torch.ones(64, 64, device=device), quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)
    except Exception as err:  # noqa: BLE001 - any failure means "does not work here"; the reason is reported
        return False, f"bitsandbytes 4-bit failed on {device.type}: {type(err).__name__}: {err}"
    return True, None


def probe_environment(device_type: str | None = None) -> EnvFacts:
    """Read OS, Python, torch/CUDA, GPU and optional-package facts; ``device_type`` is where bnb is tried."""
    cuda = torch.cuda.is_available()
    name = total = cap = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name, total, cap = props.name, props.total_memory / 2**30, (props.major, props.minor)
    device = torch.device(device_type or ("cuda" if cuda else "cpu"))
    bnb_ok, bnb_err = _bitsandbytes_works(device)
    return EnvFacts(
        os=platform.system(),
        python=sys.version.split()[0],
        torch=torch.__version__,
        cuda_available=cuda,
        cuda_version=torch.version.cuda,
        gpu_name=name,
        gpu_total_gib=None if total is None else round(total, 2),
        compute_capability=cap,
        bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()),
        num_gpus=torch.cuda.device_count() if cuda else 0,
        bitsandbytes_version=_package_version("bitsandbytes"),
        bitsandbytes_works=bnb_ok,
        bitsandbytes_error=bnb_err,
        unsloth_version=_package_version("unsloth"),
    )
