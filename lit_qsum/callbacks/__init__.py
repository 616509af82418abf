"""Callbacks for long QLoRA runs on small GPUs; YAML presets that compose them live in the top-level callbacks/."""

from lit_qsum.callbacks.batch_size_finder import LongestBatchSizeFinder
from lit_qsum.callbacks.cuda_memory_monitor import CudaMemoryMonitor
from lit_qsum.callbacks.empty_cuda_cache import EmptyCudaCache
from lit_qsum.callbacks.last_checkpoint import LastCheckpoint
from lit_qsum.callbacks.oom_batch_size_scaler import OOMBatchSizeScaler
from lit_qsum.callbacks.tensorboard_summaries import TensorBoardSummaries
from lit_qsum.callbacks.throughput import SummarizationThroughput

__all__ = [
    "CudaMemoryMonitor",
    "EmptyCudaCache",
    "LastCheckpoint",
    "LongestBatchSizeFinder",
    "OOMBatchSizeScaler",
    "SummarizationThroughput",
    "TensorBoardSummaries",
]
