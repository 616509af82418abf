"""MicroBatchState and the OOMHandler protocol the step engine finds its OOM-recovery callback by."""

from types import SimpleNamespace

from lightning.pytorch.callbacks import Callback

from lit_qsum.callbacks import OOMBatchSizeScaler
from lit_qsum.micro_batch import MicroBatchState, OOMHandler, find_oom_handler


class _TrainOnly(Callback):
    def handle_train_oom(self, trainer, pl_module, failed_size, error) -> None: ...


def test_the_scaler_is_the_handler_and_partial_implementations_are_not() -> None:
    scaler = OOMBatchSizeScaler()
    assert isinstance(scaler, OOMHandler) and not isinstance(_TrainOnly(), OOMHandler)
    assert find_oom_handler(SimpleNamespace(callbacks=[_TrainOnly(), scaler])) is scaler
    assert find_oom_handler(SimpleNamespace(callbacks=[_TrainOnly()])) is None
    assert find_oom_handler(None) is None


def test_chunk_limit_is_the_smaller_of_the_size_in_force_and_the_pending_one() -> None:
    assert MicroBatchState().chunk_limit() is None
    assert MicroBatchState(micro_batch_size=4).chunk_limit() == 4
    assert MicroBatchState(micro_batch_size=4, pending_micro_batch_size=2).chunk_limit() == 2
    assert MicroBatchState(pending_micro_batch_size=0).chunk_limit() == 0
