"""SummarizationDataModule: bundled data, batch keys, batch-size changes, and mid-epoch resume in a real Trainer."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_qsum.data.datamodule import SummarizationDataModule

TENSOR_KEYS = {"input_ids", "attention_mask", "labels", "index", "num_tokens"}
LIST_KEYS = {"fname", "references", "dialogue"}


@pytest.fixture(scope="module")
def fitted():
    dm = SummarizationDataModule(task="seq2seq", batch_size=4, eval_batch_size=5)
    dm.setup("fit")
    return dm


def test_setup_fit_with_bundled_data(fitted):
    assert set(fitted.truncation_stats) == {"train", "val"}
    assert fitted.truncation_stats["train"].examples == 2000
    assert fitted.truncation_stats["train"].dialogues_truncated == 0
    batch = next(iter(fitted.train_dataloader()))
    assert set(batch) == TENSOR_KEYS | LIST_KEYS
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] % 8 == 0
    assert all(isinstance(refs, list) and refs for refs in batch["references"])
    assert batch["fname"][0].startswith("train_")
    val = next(iter(fitted.val_dataloader()))
    assert val["input_ids"].shape[0] == 5 and set(val) == TENSOR_KEYS | LIST_KEYS


def test_batch_size_change_is_honoured_by_the_next_loader(fitted):
    fitted.batch_size = 3
    loader = fitted.train_dataloader()
    assert len(next(iter(loader))["fname"]) == 3 and len(loader) == -(-2000 // 3)
    fitted.train_batch_sampler.batch_size = 6  # what an OOM-recovery callback does
    assert fitted.batch_size == 6 and len(next(iter(fitted.train_dataloader()))["fname"]) == 6
    fitted.batch_size = 4


def test_probe_longest_serves_the_longest_batch_and_leaves_the_epoch_alone():
    dm = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=40)
    dm.setup("fit")
    epoch_sampler = dm.train_dataloader().batch_sampler
    dm.mark_consumed(4)
    dm.probe_longest = True
    dm.batch_size = 6
    probe = dm.train_dataloader()
    lengths = dm._splits["train"].lengths
    longest = sorted(sorted(range(40), key=lambda i: -lengths[i])[:6])
    assert all(sorted(batch["index"].tolist()) == longest for batch in probe)
    dm.mark_consumed(6)  # a trial step: not part of the epoch
    assert dm.train_batch_sampler is epoch_sampler and epoch_sampler.consumed_samples == 4
    dm.probe_longest = False
    assert dm.train_dataloader().batch_sampler.consumed_samples == 4


def test_truncation_is_counted_and_reported():
    dm = SummarizationDataModule(task="seq2seq", encoder_max_len=16, decoder_max_len=8, max_train_samples=50, max_eval_samples=10)
    with pytest.warns(UserWarning, match="train .*50 of 50 dialogues truncated to 16 tokens"):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] == 16 and batch["labels"].shape[1] == 8
    assert (batch["input_ids"][:, 15] == dm.tokenizer.eos_token_id).all()  # eos kept after the cut


def test_predict_and_test_splits():
    dm = SummarizationDataModule(task="seq2seq", max_eval_samples=12, eval_batch_size=4)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert sum(len(b["fname"]) for b in batches) == 12
    assert all(refs == [] for b in batches for refs in b["references"]) and "labels" not in batches[0]
    dm.setup("test")
    assert dm.source("test")[0] == dm.source("val")[0]  # test falls back to the validation data
    assert "labels" in next(iter(dm.test_dataloader()))


def test_own_data_never_falls_back_to_the_bundled_demo_splits():
    from types import SimpleNamespace

    from lit_qsum.data.synthetic import bundled_path
    from lit_qsum.errors import UserInputError

    own = str(bundled_path("train"))  # any file of the user's
    with pytest.raises(UserInputError, match=r"--data.val_path is not set.*--trainer.limit_val_batches 0"):
        SummarizationDataModule(task="seq2seq", train_path=own, max_train_samples=8).setup("fit")
    with pytest.raises(UserInputError, match=r"--data.predict_path is not set.*to summarize"):
        SummarizationDataModule(task="seq2seq", train_path=own, val_path=own).setup("predict")
    with pytest.raises(UserInputError, match=r"--data.test_path \(or --data.val_path\) is not set"):
        SummarizationDataModule(task="seq2seq", train_path=own).setup("test")
    # validation switched off: only the training split is needed
    dm = SummarizationDataModule(task="seq2seq", train_path=own, max_train_samples=8)
    dm.trainer = SimpleNamespace(limit_val_batches=0)
    dm.setup("fit")
    assert set(dm.truncation_stats) == {"train"}


def test_training_batches_sort_sources_by_padding_bucket_then_targets():
    """Seq2seq: the sampler sorts sources in buckets of the padding multiple, then targets, so a batch's targets are
    alike (the collator pads each part to its own longest); decoder-only rows are one part."""
    dm = SummarizationDataModule(task="seq2seq", batch_size=8, max_train_samples=400, pad_to_multiple_of=64)
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    features = dm._splits["train"].features
    assert sampler.bucket == 64 and sampler.parts[0] == (len(features[0]["input_ids"]), len(features[0]["labels"]))
    order = sampler.epoch_order()
    keys = [(-(-len(features[i]["input_ids"]) // 64), len(features[i]["labels"])) for i in order[8:]]
    batches = [keys[k : k + 8] for k in range(0, len(keys), 8)]  # after the first (the widest, moved up)
    assert all(b == sorted(b, reverse=True) for b in batches)  # each a slice of one sorted order
    assert sum(len({k[0] for k in b}) == 1 for b in batches) > 0.8 * len(batches)  # mostly one source bucket
    batch = next(iter(loader))
    assert batch["input_ids"].shape[1] % 64 == 0 and batch["labels"].shape[1] % 64 == 0
    plain = SummarizationDataModule(task="seq2seq", batch_size=8, max_train_samples=400, pad_to_multiple_of=64,
                                    group_by_target=False)
    plain.setup("fit")
    assert plain.train_dataloader().batch_sampler.bucket is None  # by dialogue + summary length
    causal = SummarizationDataModule(task="causal", batch_size=2, max_train_samples=8)
    causal.setup("fit")
    assert len(causal.train_dataloader().batch_sampler.parts[0]) == 1


def test_causal_task_batches():
    dm = SummarizationDataModule(task="causal", batch_size=2, max_train_samples=8, max_eval_samples=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert {"prompt_input_ids", "prompt_attention_mask", "input_ids", "labels"} <= set(batch)
    prompt = dm.tokenizer.decode(batch["prompt_input_ids"][0], skip_special_tokens=True)
    assert prompt.startswith("Summarize the dialogue.\n#Person") and prompt.rstrip().endswith("Summary:")


def test_hf_dataset_splits(tmp_path):
    import datasets

    rows = {"id": ["a", "b", "c"], "dialogue": ["#Person1#: hi", "#Person1#: 안녕", "#Person1#: yo"],
            "summary": ["s1", "s2", "s3"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
                         ).save_to_disk(str(tmp_path))
    dm = SummarizationDataModule(task="seq2seq", hf_dataset=str(tmp_path), id_column="id", batch_size=2)
    dm.setup("fit")
    assert sorted(f for b in dm.train_dataloader() for f in b["fname"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"batch_size": 0}, "--data.batch_size"), ({"eval_batch_size": 0}, "--data.eval_batch_size"),
     ({"encoder_max_len": 0}, "--data.encoder_max_len"), ({"num_workers": -1}, "--data.num_workers"),
     ({"task": "causal", "prompt_template": "no slot"}, "--data.prompt_template"),
     ({"summary_columns": []}, "--data.summary_columns"),
     ({"target_pad_to_multiple_of": 0}, "--data.target_pad_to_multiple_of")],
)
def test_invalid_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        SummarizationDataModule(**kwargs)


def test_state_round_trip_before_the_loader_exists():
    dm = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=40)
    dm.setup("fit")
    first = [f for b in list(dm.train_dataloader())[:3] for f in b["fname"]]
    for _ in range(3):
        dm.mark_consumed(4)
    state = dm.state_dict()
    assert state["train_sampler"]["consumed_samples"] == 12

    resumed = SummarizationDataModule(task="seq2seq", batch_size=5, max_train_samples=40)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    rest = [f for b in loader for f in b["fname"]]
    assert sorted(first + rest) == sorted(r.fname for r in resumed._splits["train"].records)
    assert len(loader) == 3 + 28 // 5 + 1


class _Recorder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(4096, 2)
        self.seen: list[tuple[int, list[str]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, list(batch["fname"])))
        return self.embedding(batch["input_ids"]).mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _MarkingRecorder(_Recorder):
    """Marks consumption from the module's own hook, which also runs during BatchSizeFinder trials."""

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.trainer.datamodule.mark_consumed(len(batch["index"]))


class _MarkConsumed(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.datamodule.mark_consumed(len(batch["index"]))


def _trainer(tmp_path, callbacks, **kwargs):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=1,
                   default_root_dir=tmp_path, callbacks=callbacks, **kwargs)


def test_trainer_epochs_cover_all_samples_in_new_orders(tmp_path):
    dm = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=24, max_eval_samples=4)
    model = _Recorder()
    _trainer(tmp_path, [_MarkConsumed()], max_epochs=2, enable_checkpointing=False).fit(model, dm)
    epochs = [[f for epoch, names in model.seen if epoch == e for f in names] for e in (0, 1)]
    assert all(len(names) == len(set(names)) == 24 for names in epochs)
    assert epochs[0] != epochs[1] and dm.train_batch_sampler.epoch == 1


@pytest.mark.parametrize("marker", ["callback", "module"])
def test_trainer_resumes_mid_epoch_with_another_batch_size(tmp_path, marker):
    dm = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=40, max_eval_samples=4)
    first = _Recorder() if marker == "callback" else _MarkingRecorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    callbacks = [_MarkConsumed(), checkpoint] if marker == "callback" else [checkpoint]
    _trainer(tmp_path, callbacks, max_steps=4).fit(first, dm)
    ckpt = tmp_path / "epoch=0-step=4.ckpt"
    assert ckpt.exists()

    dm2 = SummarizationDataModule(task="seq2seq", batch_size=3, max_train_samples=40, max_eval_samples=4)
    second = _Recorder()
    _trainer(tmp_path, [_MarkConsumed()], max_epochs=1, enable_checkpointing=False).fit(second, dm2, ckpt_path=ckpt)
    before = [f for _, names in first.seen for f in names]
    after = [f for _, names in second.seen for f in names]
    assert len(before) == 16 and len(after) == 24
    assert sorted(before + after) == sorted(r.fname for r in dm2._splits["train"].records)
    assert [len(names) for _, names in second.seen] == [3] * 8


def test_batch_size_finder_sets_the_size_the_next_epoch_uses(tmp_path):
    from lightning.pytorch.callbacks import BatchSizeFinder

    dm = SummarizationDataModule(task="seq2seq", batch_size=2, max_train_samples=64, max_eval_samples=4)
    model = _MarkingRecorder()
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, init_val=2, max_trials=2)
    _trainer(tmp_path, [finder], max_epochs=1, enable_checkpointing=False).fit(model, dm)
    assert finder.optimal_batch_size == dm.batch_size == 4
    trained = [names for _, names in model.seen][-16:]  # after the trial steps
    assert [len(names) for names in trained] == [4] * 16
    assert sorted(f for names in trained for f in names) == sorted(r.fname for r in dm._splits["train"].records)


def test_batches_are_page_locked_for_a_gpu_run_only(fitted):
    """On a GPU, pinned batches make Lightning's copy to the device asynchronous (from pageable memory it waits for the
    GPU's queued work: a host sync per step); on the CPU there is nothing to pin for."""
    from types import SimpleNamespace

    import torch

    assert fitted.train_dataloader().pin_memory is False  # no trainer: a CPU run
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), world_size=1, global_rank=0)
    fitted.trainer = gpu
    try:
        assert fitted.train_dataloader().pin_memory is True and fitted.val_dataloader().pin_memory is True
    finally:
        fitted.trainer = None
