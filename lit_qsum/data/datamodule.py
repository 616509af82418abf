"""The LightningDataModule: loads splits, tokenizes, and serves length-grouped, resumable batches.

Sharding is ours (run the Trainer with ``use_distributed_sampler=False``): the train loader's
``LengthGroupedBatchSampler`` and the eval loaders' ``SortedEvalBatchSampler`` take
``trainer.world_size``/``global_rank``. Lightning calls ``set_epoch`` on the train sampler through
``dataloader.batch_sampler.sampler`` (see ``lightning.fabric.utilities.data._set_sampler_epoch``).

Resuming mid-epoch: Lightning counts batches, not samples, so call ``mark_consumed(len(batch["index"]))``
once per finished training batch (from the LightningModule's or a Callback's ``on_train_batch_end``;
``state_dict`` also counts a finished batch whose call has not run yet when a checkpoint is saved).
``state_dict`` carries the epoch position into checkpoints and ``load_state_dict`` restores it, so
the resumed epoch yields exactly the samples not yet trained on, even at another batch size or number of
GPUs: the position counts samples of all ranks together, and the rest of the epoch is cut into global
batches of ``batch_size`` x the new world size (so the effective batch per step follows the GPU count).
(Lightning still warns that the dataloader "is not resumable": it only knows about loaders with
their own ``state_dict``; the position travels in the datamodule's state instead.)

Changing ``batch_size`` while an epoch runs (``OOMBatchSizeScaler``) applies from the next batch;
``probe_longest`` (``LongestBatchSizeFinder``) makes ``train_dataloader()`` serve only the longest
samples, for trial steps that must not move the epoch position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from lit_qsum.data.collate import CausalCollator, Seq2SeqCollator, WithRecordFields
from lit_qsum.data.features import TruncationStats, causal_features, feature_length, feature_parts, seq2seq_features
from lit_qsum.data.formats import ColumnMap, DataFormatError, Record, load_records
from lit_qsum.data.length_grouped_sampler import (
    LengthGroupedBatchSampler,
    LongestBatchSampler,
    PaddingAwareDataset,
    SortedEvalBatchSampler,
)
from lit_qsum.data.synthetic import bundled_path
from lit_qsum.data.tokenizer import load_tokenizer
from lit_qsum.errors import UserInputError

SplitName = Literal["train", "val", "test", "predict"]
_STAGE_SPLITS: dict[str | None, tuple[SplitName, ...]] = {
    "fit": ("train", "val"), None: ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)
}
_WARN_TRUNCATED_FRACTION = 0.05
_MISSING_SPLIT_HINT = {
    "train": "Give the CSV/JSONL to train on.",
    "val": "Give a held-out CSV/JSONL with summaries, or --trainer.limit_val_batches 0 to train without validation.",
    "test": "Give a CSV/JSONL with summaries to score.",
    "predict": "Give the CSV/JSONL to summarize.",
}


@dataclass
class _Split:
    records: list[Record]
    features: list[dict[str, Any]]
    lengths: list[int]
    parts: list[tuple[int, ...]]  # the lengths the collator pads separately (source, target)


class SummarizationDataModule(LightningDataModule):
    """Dialogue summarization data for seq2seq or decoder-only models; bundled synthetic data by default.

    Args:
        train_path: Training CSV/JSONL/JSON file or dataset; None = --data.hf_dataset's split, or the bundled demo
            data when no data path or dataset is given at all.
        val_path: Validation file or dataset (with summaries); None = --data.hf_dataset's split, or the bundled
            demo data when no data path or dataset is given at all; with --data.train_path it must be set (or
            --trainer.limit_val_batches 0 trains without validation).
        test_path: Test file or dataset (with summaries); None = the validation data.
        predict_path: File or dataset to summarize (summaries not needed); None = --data.hf_dataset's test split, or
            the bundled demo data when no data path or dataset is given at all.
        hf_dataset: Hugging Face dataset name or save_to_disk dir supplying splits not given as paths.
        train_split: Split of ``hf_dataset`` used for training.
        val_split: Split of ``hf_dataset`` used for validation.
        test_split: Split of ``hf_dataset`` used for testing and prediction.
        id_column: Column with unique example ids (``id`` for DialogSum/SAMSum on the hub); made up if absent.
        dialogue_column: Column with the dialogue text.
        summary_columns: Columns with reference summaries; several = several references, the first is trained on.
        topic_column: Optional column with a topic label; None to ignore.
        tokenizer: ``lit_qsum:demo``, a local tokenizer directory or a hub id (the CLI links it to the model's).
        task: ``seq2seq`` (T5/BART), ``causal`` (decoder-only: prompt + summary in one sequence), or ``auto``:
            asked of the model at setup (the CLI does this for you).
        prompt_template: Causal prompt; must contain ``{dialogue}`` once.
        encoder_max_len: Max tokens of a dialogue (seq2seq) or prompt (causal); longer ones are cut.
        decoder_max_len: Max tokens of a target summary, eos included.
        batch_size: Training samples per step and device; a batch-size finder or OOM recovery may change it.
        eval_batch_size: Samples per validation/test/predict batch; None = batch_size.
        pad_to_multiple_of: Pad sequence lengths to a multiple of this (8 suits tensor cores).
        target_pad_to_multiple_of: Pad summaries (seq2seq labels; the summary rows of a decoder-only loss) to a multiple
            of this instead; None = ``pad_to_multiple_of``. Summaries are short: a smaller multiple pads them less, at
            the cost of more distinct batch shapes (each a CUDA-graph capture).
        group_by_target: Seq2seq training batches: sort dialogues in buckets of ``pad_to_multiple_of`` tokens (which
            they are padded to anyway), then by summary length, so a batch's summaries pad little; False sorts by
            dialogue + summary length. Decoder-only rows are one sequence either way.
        num_workers: DataLoader worker processes; 0 collates in the main process.
        seed: Seed of the per-epoch sample order.
        max_train_samples: Use only the first N training examples (quick runs); None = all.
        max_eval_samples: Use only the first N examples of val/test/predict; None = all.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        hf_dataset: str | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        id_column: str = "fname",
        dialogue_column: str = "dialogue",
        summary_columns: list[str] = ["summary"],  # noqa: B006 - copied below; shows the default in --help
        topic_column: str | None = "topic",
        tokenizer: str = "lit_qsum:demo",
        task: Literal["auto", "seq2seq", "causal"] = "auto",
        prompt_template: str = "Summarize the dialogue.\n{dialogue}\nSummary: ",
        encoder_max_len: int = 512,
        decoder_max_len: int = 200,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        pad_to_multiple_of: int = 8,
        target_pad_to_multiple_of: int | None = None,
        group_by_target: bool = True,
        num_workers: int = 0,
        seed: int = 42,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
    ) -> None:
        super().__init__()
        for flag, value, minimum in [
            ("encoder_max_len", encoder_max_len, 1), ("decoder_max_len", decoder_max_len, 2),
            ("eval_batch_size", eval_batch_size, 1), ("pad_to_multiple_of", pad_to_multiple_of, 1),
            ("target_pad_to_multiple_of", target_pad_to_multiple_of, 1),
            ("num_workers", num_workers, 0), ("max_train_samples", max_train_samples, 1),
            ("max_eval_samples", max_eval_samples, 1),
        ]:
            if value is not None and value < minimum:
                raise UserInputError(f"--data.{flag} must be >= {minimum}, got {value}")
        if task not in ("auto", "seq2seq", "causal"):
            raise UserInputError(f"--data.task must be 'auto', 'seq2seq' or 'causal', got {task!r}")
        if task == "causal" and prompt_template.count("{dialogue}") != 1:
            raise UserInputError(
                f"--data.prompt_template must contain '{{dialogue}}' exactly once, got {prompt_template!r}"
            )
        self.columns = ColumnMap(id_column, dialogue_column, list(summary_columns), topic_column)
        self.save_hyperparameters()
        self.paths = {"train": train_path, "val": val_path, "test": test_path, "predict": predict_path}
        self.hf_dataset = hf_dataset
        self.hf_splits = {"train": train_split, "val": val_split, "test": test_split, "predict": test_split}
        self.tokenizer_spec = tokenizer
        self.task = task
        self.prompt_template = prompt_template
        self.encoder_max_len = encoder_max_len
        self.decoder_max_len = decoder_max_len
        self.train_batch_sampler: LengthGroupedBatchSampler | None = None
        self._batch_size = 0
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.target_pad_to_multiple_of = target_pad_to_multiple_of
        self.group_by_target = group_by_target
        self.num_workers = num_workers
        self.seed = seed
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.truncation_stats: dict[str, TruncationStats] = {}
        self._splits: dict[str, _Split] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._pending_sampler_state: dict[str, Any] | None = None
        # set by LongestBatchSizeFinder while it probes: train loaders repeat the longest batch
        self.probe_longest = False

    @property
    def batch_size(self) -> int:
        """Training batch size per device; once the train sampler exists, the sampler's value is the truth."""
        return self.train_batch_sampler.batch_size if self.train_batch_sampler is not None else self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if value < 1:
            raise UserInputError(f"--data.batch_size must be > 0, got {value}")
        self._batch_size = value
        if self.train_batch_sampler is not None:
            self.train_batch_sampler.batch_size = value

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The loaded tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    def source(self, split: SplitName) -> tuple[str, str]:
        """(file or dataset, dataset split) of a split: explicit path, else ``hf_dataset``, else bundled data."""
        path = self.paths[split] or (self.paths["val"] if split == "test" else None)
        if path is not None:
            return path, self.hf_splits[split]
        if self.hf_dataset is not None:
            return self.hf_dataset, self.hf_splits[split]
        if any(self.paths.values()):  # the user's own data: never mix in the demo's
            flag = "--data.test_path (or --data.val_path)" if split == "test" else f"--data.{split}_path"
            raise UserInputError(f"{flag} is not set; with your own data it would fall back to the bundled demo "
                                 f"dialogues. {_MISSING_SPLIT_HINT[split]}")
        return bundled_path({"train": "train", "val": "dev", "test": "dev", "predict": "test"}[split]), split

    def setup(self, stage: str | None = None) -> None:
        """Loads and tokenizes the splits ``stage`` needs (each once per process)."""
        if self.task == "auto":
            trainer = getattr(self, "trainer", None)
            module = trainer.lightning_module if trainer is not None else None
            if module is None or not hasattr(module, "resolve_task"):
                raise UserInputError("--data.task auto needs a lit-qsum model to ask; set --data.task seq2seq or causal")
            self.task = module.resolve_task()
        splits = _STAGE_SPLITS.get(stage, ("train", "val"))
        trainer = self.trainer
        if stage == "fit" and trainer is not None and trainer.limit_val_batches == 0:
            splits = ("train",)  # validation is off: Lightning never asks for its loader
        for split in splits:
            if split not in self._splits:
                self._splits[split] = self._load(split)

    def _load(self, split: SplitName) -> _Split:
        source, hf_split = self.source(split)
        with_labels = split != "predict"
        try:
            records = load_records(source, self.columns, require_summary=with_labels, split=hf_split)
        except DataFormatError as err:
            raise DataFormatError(f"{self._flag_of(split)}: {err}") from err
        limit = self.max_train_samples if split == "train" else self.max_eval_samples
        records = records[:limit] if limit is not None else records
        if self.task == "seq2seq":
            features, stats = seq2seq_features(
                records, self.tokenizer, self.encoder_max_len, self.decoder_max_len, with_labels, source
            )
        else:
            features, stats = causal_features(
                records, self.tokenizer, self.prompt_template, self.encoder_max_len, self.decoder_max_len,
                with_labels, source,
            )
        self.truncation_stats[split] = stats
        cut = max(stats.dialogues_truncated, stats.summaries_truncated)
        if cut > _WARN_TRUNCATED_FRACTION * stats.examples:
            rank_zero_warn(f"{stats.message(split)}; raise --data.encoder_max_len/--data.decoder_max_len to keep more")
        else:
            rank_zero_info(stats.message(split))
        return _Split(records, features, [feature_length(f) for f in features], [feature_parts(f) for f in features])

    def _flag_of(self, split: SplitName) -> str:
        """The flag that chose this split's data, for error messages."""
        if self.paths[split]:
            return f"--data.{split}_path"
        if split == "test" and self.paths["val"]:
            return "--data.val_path"
        return "--data.hf_dataset" if self.hf_dataset is not None else f"--data.{split}_path (bundled data)"

    def _split(self, split: SplitName) -> _Split:
        if split not in self._splits:
            stage = {"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split]
            raise RuntimeError(f"{split} data is not loaded; call setup({stage!r}) first")
        return self._splits[split]

    def _on_cuda(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _sharding(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: SplitName, batch_sampler: Sampler[list[int]]) -> DataLoader:
        data = self._split(split)
        collate = Seq2SeqCollator if self.task == "seq2seq" else CausalCollator
        dataset = data.features if split == "train" else PaddingAwareDataset(data.features)
        return DataLoader(
            dataset,  # type: ignore[arg-type]  # a list is a map-style dataset
            batch_sampler=batch_sampler,
            collate_fn=WithRecordFields(
                collate(self.tokenizer.pad_token_id, self.pad_to_multiple_of, self.target_pad_to_multiple_of), data.records
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # page-locked batches: the copy to the GPU is asynchronous; from pageable memory it waits for the GPU to
            # finish all queued work first, a host sync per step
            pin_memory=self._on_cuda(),
            # its own generator: without one, every new iterator (each epoch, each validation) draws its workers'
            # base seed from the global torch RNG, after a resume restored it, and shifts every later dropout mask
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Length-grouped loader at the current ``batch_size``; keeps the previous sampler's epoch position."""
        if self.probe_longest:
            # trial batches are not part of the epoch: the epoch's sampler and its position stay as they are
            return self._loader("train", LongestBatchSampler(self._split("train").parts, self.batch_size))
        world_size, rank = self._sharding()
        # sources sorted in buckets of the padding multiple, then by target length: batches of alike targets
        bucket = self.pad_to_multiple_of if self.group_by_target else None
        sampler = LengthGroupedBatchSampler(self._split("train").parts, self.batch_size, seed=self.seed,
                                            num_replicas=world_size, rank=rank, bucket=bucket)
        previous = self.train_batch_sampler.state_dict() if self.train_batch_sampler else self._pending_sampler_state
        if previous:
            self._restore(sampler, previous)
        self.train_batch_sampler = sampler
        self._pending_sampler_state = None
        return self._loader("train", sampler)

    def _eval_loader(self, split: SplitName) -> DataLoader:
        world_size, rank = self._sharding()
        lengths = self._split(split).lengths
        sampler = SortedEvalBatchSampler(lengths, self.eval_batch_size or self.batch_size, world_size, rank)
        return self._loader(split, sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, longest first."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches, longest first."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches, longest first; ``references`` are empty lists when the data has no summaries."""
        return self._eval_loader("predict")

    def mark_consumed(self, num_samples: int) -> None:
        """Records a finished training batch of ``num_samples`` on this rank (call once per step on every rank)."""
        if self.probe_longest:
            return  # a batch-size trial step, not a step of the epoch
        if self.train_batch_sampler is None:
            raise RuntimeError("mark_consumed() before train_dataloader(): there is no epoch to advance")
        # Every rank gets batch_size samples per step except in the epoch's last step, where the
        # sampler clamps the overshoot, so this rank's count times the world size is the global count.
        self.train_batch_sampler.mark_consumed(num_samples * self.train_batch_sampler.num_replicas)

    def _restore(self, sampler: LengthGroupedBatchSampler, state: dict[str, Any]) -> None:
        # The configured batch size wins over the saved one: BatchSizeFinder restores a checkpoint
        # after choosing a size, and a resume may deliberately use another size; the sample order
        # of the epoch does not depend on it.
        state = {key: value for key, value in state.items() if key != "batch_size"}
        try:
            sampler.load_state_dict(state)
        except ValueError as err:
            rank_zero_warn(f"not resuming the train epoch mid-way ({err}); it starts from its first sample")

    def state_dict(self) -> dict[str, Any]:
        """The train sampler's epoch position; the start of epoch 0 before any train loader exists."""
        sampler = self.train_batch_sampler
        if sampler is not None:
            # A LightningModule's on_train_batch_end runs after every Callback's, so a ModelCheckpoint
            # saving at a step boundary may see a finished batch whose mark_consumed has not run yet.
            # Lightning's per-epoch batch counter tells; the sampler counts such batches as consumed
            # at the size they were handed out with (OOM recovery may have changed batch_size since).
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self._training() else 0
            return {"train_sampler": sampler.state_dict(unmarked_batches=max(done - sampler.consumed_batches, 0))}
        # Never empty: BatchSizeFinder saves a checkpoint before the first train loader exists and
        # restores it after its trial steps, which must undo any mark_consumed calls they made.
        return {"train_sampler": self._pending_sampler_state or {"epoch": 0, "consumed_samples": 0}}

    def _training(self) -> bool:
        return self.trainer is not None and self.trainer.training

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the train epoch position now, or when the train loader is next built."""
        saved = state_dict.get("train_sampler")
        if not saved:
            return
        if saved.get("batch_size", self.batch_size) != self.batch_size:
            rank_zero_info(
                f"resuming with --data.batch_size {self.batch_size} (checkpoint: {saved['batch_size']}); "
                "the epoch continues with the same sample order"
            )
        if self.train_batch_sampler is not None:
            self._restore(self.train_batch_sampler, saved)
        else:
            self._pending_sampler_state = dict(saved)
