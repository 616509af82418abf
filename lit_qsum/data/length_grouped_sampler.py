"""Length-grouped, resumable, DDP-sharded batch samplers: less padding per batch, OOM on step 1.

Train (``LengthGroupedBatchSampler``), per epoch:

1. A permutation seeded by ``seed + epoch`` is cut into megabatches of
   ``order_group_size * megabatch_mult`` samples, each sorted by length, longest first, and cut
   into reference batches of ``order_group_size`` samples (the global batch size when the epoch
   started). The batch with the largest padded size goes first, so an OOM shows on step 1; the
   other full batches are shuffled; a partial batch stays last.

   Seq2seq samples have two lengths, source and target, padded separately. Sorted by their sum,
   neighbours share a total but not a target length, and a batch pads every target to its longest:
   at micro-batch 64 on lognormal lengths a third of the target positions are padding. With
   ``bucket`` (the collator's ``pad_to_multiple_of``) the sort is by the source length rounded up
   to the bucket, which the collator pads to anyway, then by target length: the sources pad as
   before and the targets of a batch are alike.
2. That flat sample order is fixed for the epoch. ``consumed_samples`` (global, all ranks) samples
   of it are skipped and the rest is cut into global batches of the *current*
   ``batch_size * num_replicas``, read anew for every batch: a change made while the epoch runs
   (OOM recovery) applies from the next batch the loader asks for. A resumed or OOM-shrunk epoch
   therefore yields exactly the samples not yet trained on. Halving the batch size splits each
   reference batch in two, so length grouping survives; other changes still yield each sample
   once, with slightly mixed batches.
3. Rank ``r`` takes every ``num_replicas``-th sample of each global batch starting at ``r``, which
   gives ranks batches of similar length (contiguous slices would hand rank 0 all the longest).

DDP padding: with ``drop_last=False`` every rank still gets the same number of batches; only when
the epoch's last global batch has fewer samples than ranks are its samples repeated to give each
rank one (so at most ``num_replicas - 1`` duplicates per epoch). Otherwise the last batch is just
smaller on some ranks, by at most one sample.

Lightning's fit loop counts the batches it has run in an epoch against ``len(dataloader)``
(``_DataFetcher.fetched`` starts at ``batch_progress.current.ready`` on resume). So ``__len__`` is
``consumed_batches`` + the batches handed out but not yet marked consumed (the one in training,
any a worker prefetched) + those still to come at the current batch size, and whoever sets
``consumed_samples`` mid-epoch must set ``consumed_batches`` to the number of steps Lightning has
counted; ``mark_consumed`` keeps both in step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from lit_qsum.data.collate import round_up


def _parts(lengths: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Each sample's lengths as a tuple of parts (one part for a plain length)."""
    parts = [tuple(int(x) for x in length) if isinstance(length, (tuple, list)) else (int(length),) for length in lengths]
    if len({len(p) for p in parts}) > 1:
        raise ValueError("lengths: every sample needs the same number of parts")
    return parts


def _check_sharding(num_replicas: int, rank: int) -> None:
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Training batches of similar-length samples; seeded per epoch, resumable mid-epoch, DDP-sharded.

    ``lengths``: one length per sample, or a tuple of part lengths (source, target) padded separately; ``bucket``:
    sort tuples by their first part rounded up to this multiple, then by the rest (None: by their sum). Part of the
    saved state, so a resumed epoch keeps its order whatever the new settings.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 42,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        megabatch_mult: int = 50,
        bucket: int | None = None,
    ) -> None:
        if isinstance(lengths, Sampler):
            # Lightning re-creates batch samplers as cls(sampler, batch_size=..., drop_last=...) when
            # it injects a DistributedSampler; that would silently use indices as lengths.
            raise TypeError(
                "LengthGroupedBatchSampler shards by itself: run the Trainer with use_distributed_sampler=False"
            )
        if batch_size < 1:
            raise ValueError(f"--data.batch_size must be > 0, got {batch_size}")
        if megabatch_mult < 1:
            raise ValueError(f"megabatch_mult must be >= 1, got {megabatch_mult}")
        if bucket is not None and bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        _check_sharding(num_replicas, rank)
        self.parts = _parts(lengths)
        self.lengths = [sum(parts) for parts in self.parts]
        self.configured_bucket = bucket
        self.bucket = bucket  # frozen while an epoch is partly consumed, like order_group_size
        self.batch_size = batch_size  # mutable: a new value applies from the next batch handed out
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.megabatch_mult = megabatch_mult
        self.epoch = 0
        self.consumed_samples = 0  # global: summed over all ranks
        self.consumed_batches = 0  # steps run this epoch, as Lightning counts them
        self.order_group_size = batch_size * num_replicas  # frozen while an epoch is partly consumed
        # global sizes of the batches handed out but not yet marked consumed, oldest first
        self._handed_out: deque[int] = deque()

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        """This sampler: Lightning's ``_set_sampler_epoch`` looks for ``set_epoch`` on ``batch_sampler.sampler``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's order; moving to another epoch restarts it from its first sample."""
        if epoch != self.epoch:
            # Lightning also calls this with the current epoch right after a resume, which must not
            # throw away the restored position.
            self.epoch = epoch
            self.consumed_samples = 0
            self.consumed_batches = 0
            self._handed_out.clear()

    def mark_consumed(self, num_samples: int) -> None:
        """Records one finished global step of ``num_samples`` samples (all ranks together)."""
        # The size recorded when the batch was handed out is exact; the caller's count is not on the
        # epoch's DDP-padded last batch, and is the only one we have if the batch came from elsewhere.
        size = self._handed_out.popleft() if self._handed_out else num_samples
        self.consumed_samples = min(self.consumed_samples + size, len(self.lengths))
        self.consumed_batches += 1

    def epoch_order(self) -> list[int]:
        """The epoch's full sample order; it depends on seed, epoch, ``order_group_size`` and ``bucket``, not
        ``batch_size``."""
        n, group = len(self.lengths), self.order_group_size
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        megabatch = group * self.megabatch_mult
        key = self._sort_key()
        for start in range(0, n, megabatch):
            # Stable sort: equal keys keep their shuffled order, so the result is deterministic.
            order[start : start + megabatch] = sorted(order[start : start + megabatch], key=key)
        batches = [order[start : start + group] for start in range(0, n, group)]
        if not batches:
            return []
        tail = batches.pop() if len(batches[-1]) < group and len(batches) > 1 else None
        longest = max(range(len(batches)), key=lambda b: self._padded(batches[b]))
        if tail is not None and self._padded(tail[:1]) > self._padded(batches[longest]):
            # The partial batch holds the longest sample: swap it into the first full batch instead
            # of moving the partial batch up, which would misalign every later batch.
            tail[0], batches[longest][0] = batches[longest][0], tail[0]
        first = batches.pop(longest)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return [i for batch in [first, *batches, *([tail] if tail else [])] for i in batch]

    def _sort_key(self) -> Callable[[int], tuple[int, ...]]:
        """Longest first: by total length, or (with ``bucket``) by the bucketed first part, then by the others."""
        if self.bucket is None:
            return lambda i: (-self.lengths[i],)
        bucket = self.bucket
        return lambda i: (-round_up(self.parts[i][0], bucket), *(-part for part in self.parts[i][1:]))

    def _padded(self, batch: list[int]) -> int:
        """A batch's padded length per sample: each part padded to its longest in the batch and the source to the
        bucket; without a bucket, its longest sample's total, as before buckets (a resumed state keeps its order)."""
        if self.bucket is None:
            return max(self.lengths[i] for i in batch)
        widths = [max(self.parts[i][p] for i in batch) for p in range(len(self.parts[batch[0]]))]
        widths[0] = round_up(widths[0], self.bucket)
        return sum(widths)

    def _num_remaining_batches(self, handed_out: int = 0) -> int:
        remaining = max(len(self.lengths) - self.consumed_samples - handed_out, 0)
        full, partial = divmod(remaining, self.batch_size * self.num_replicas)
        return full + int(partial > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the state is read when the first batch is requested, not at iter(). Lightning
        # builds the epoch-0 iterator before it calls set_epoch(0); later epochs get set_epoch first.
        self._handed_out.clear()  # batches a previous iterator handed out unconsumed come again
        if self.consumed_samples == 0:
            self.order_group_size = self.batch_size * self.num_replicas
            self.bucket = self.configured_bucket
        order = self.epoch_order()
        position = self.consumed_samples
        while position < len(order):
            step = self.batch_size * self.num_replicas  # per batch: OOM recovery may shrink it mid-epoch
            batch = order[position : position + step]
            if len(batch) < step and self.drop_last:
                return
            position += len(batch)
            self._handed_out.append(len(batch))
            if len(batch) < self.num_replicas:
                batch = [batch[i % len(batch)] for i in range(self.num_replicas)]  # see "DDP padding"
            yield batch[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        """Batches of this epoch on this rank: those already run or handed out, plus those still to come."""
        handed_out = sum(self._handed_out)
        return self.consumed_batches + len(self._handed_out) + self._num_remaining_batches(handed_out)

    def state_dict(self, unmarked_batches: int = 0) -> dict[str, Any]:
        """Position in the epoch, enough to continue it in another process.

        ``unmarked_batches``: batches that finished training but whose ``mark_consumed`` has not run
        yet; they count as consumed, at the sizes they were handed out with.
        """
        consumed_samples, consumed_batches = self.consumed_samples, self.consumed_batches
        if unmarked_batches > 0:
            sizes = list(self._handed_out)[:unmarked_batches]
            sizes += [self.batch_size * self.num_replicas] * (unmarked_batches - len(sizes))
            consumed_samples = min(consumed_samples + sum(sizes), len(self.lengths))
            consumed_batches += unmarked_batches
        return {
            "epoch": self.epoch,
            "consumed_samples": consumed_samples,
            "consumed_batches": consumed_batches,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "order_group_size": self.order_group_size,
            "bucket": self.bucket,
            "num_samples": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues the saved epoch; ``batch_size`` is restored only if present in ``state``."""
        if state.get("num_samples", len(self.lengths)) != len(self.lengths):
            raise ValueError(
                f"sampler state is for {state['num_samples']} samples but the dataset has {len(self.lengths)}"
            )
        self.epoch = int(state["epoch"])
        self.consumed_samples = int(state["consumed_samples"])
        self.consumed_batches = int(state.get("consumed_batches", 0))
        self.seed = int(state.get("seed", self.seed))
        self.batch_size = int(state.get("batch_size", self.batch_size))
        self.order_group_size = int(state.get("order_group_size", self.batch_size * self.num_replicas))
        # a state saved before buckets existed was ordered by total length: None keeps that order
        self.bucket = state.get("bucket")
        self._handed_out.clear()
        if self.consumed_samples > 0 and self._num_remaining_batches() == 0:
            # Saved at the very end of an epoch: start the next one rather than report an empty epoch.
            self.set_epoch(self.epoch + 1)


class SortedEvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches sorted by length, longest first; each sample exactly once over all ranks.

    Ranks take every ``num_replicas``-th sample of the sorted order, so no sample is duplicated
    (metrics stay exact) and rank sample counts differ by at most one. Every rank yields the same
    number of batches, as FSDP needs (each forward all-gathers parameters on all ranks): a rank that
    would have one batch fewer gets a padding batch instead, one sample repeated and marked as padding
    (its index is offset by the dataset size; ``PaddingAwareDataset`` resolves it and sets
    ``is_padding``), which the module runs but never scores or writes.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"--data.eval_batch_size must be > 0, got {batch_size}")
        _check_sharding(num_replicas, rank)
        self.lengths = [int(length) for length in lengths]
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[list[int]]:
        ordered = sorted(range(len(self.lengths)), key=lambda i: -self.lengths[i])
        mine = ordered[self.rank :: self.num_replicas]
        for start in range(0, len(mine), self.batch_size):
            yield mine[start : start + self.batch_size]
        if len(self) > math.ceil(len(mine) / self.batch_size):
            yield [len(self.lengths) + ordered[-1]]  # the shortest sample, as padding

    def __len__(self) -> int:
        """Number of batches on every rank (that of rank 0, which holds the most samples)."""
        most = math.ceil(len(self.lengths) / self.num_replicas)
        return math.ceil(most / self.batch_size)


class PaddingAwareDataset(Sequence[dict[str, Any]]):
    """A list of features where index ``len + i`` is sample ``i`` marked ``is_padding`` (see ``SortedEvalBatchSampler``)."""

    def __init__(self, features: Sequence[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if index >= len(self.features):
            return {**self.features[index - len(self.features)], "is_padding": True}
        return self.features[index]


class LongestBatchSampler(Sampler[list[int]]):
    """Every batch is the ``batch_size`` longest samples: the worst case, for batch-size probing.

    ``LongestBatchSizeFinder`` trains a few steps per candidate size; random batches would let it
    pick a size that fits the average batch and OOMs on the longest one hours later. Repeating the
    longest batch also covers the step after the first, when the optimizer state exists too.
    ``__len__`` is that of a normal epoch, so Lightning's loop sees a loader of the usual shape.
    """

    def __init__(self, lengths: Sequence[int] | Sequence[Sequence[int]], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"--data.batch_size must be > 0, got {batch_size}")
        self.parts = _parts(lengths)
        self.lengths = [sum(parts) for parts in self.parts]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        longest = sorted(range(len(self.lengths)), key=lambda i: -self.lengths[i])[: self.batch_size]
        # with parts padded separately, a training batch can pair the longest source with the longest target: the
        # probe batch holds both, so it pads as wide as any batch can
        for p in range(len(self.parts[0]) if self.parts else 0):
            widest = max(range(len(self.parts)), key=lambda i: self.parts[i][p])
            if widest not in longest and len(longest) > 1:
                longest[-1 - p] = widest
        for _ in range(len(self)):
            yield list(longest)

    def __len__(self) -> int:
        """Batches of a normal epoch at this batch size."""
        return math.ceil(len(self.lengths) / self.batch_size)
