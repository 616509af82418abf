"""Callbacks for long QLoRA runs on small GPUs; YAML presets that compose them live in the top-level callbacks/."""

from lit_qsum.callbacks.cuda_memory_monitor import CudaMemoryMonitor
from lit_qsum.callbacks.empty_cuda_cache import EmptyCudaCache
from lit_qsum.callbacks.throughput import SummarizationThroughput

__all__ = ["CudaMemoryMonitor", "EmptyCudaCache", "SummarizationThroughput"]
