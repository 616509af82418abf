"""LengthGroupedBatchSampler and SortedEvalBatchSampler: coverage, grouping, seeding, DDP, resume."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_qsum.data.length_grouped_sampler import (
    LengthGroupedBatchSampler,
    LongestBatchSampler,
    PaddingAwareDataset,
    SortedEvalBatchSampler,
)

N = 1000
_RNG = random.Random(0)
LENGTHS = [_RNG.randint(1, 500) for _ in range(N)]


def _ranks(lengths, batch_size, world, **kwargs):
    return [LengthGroupedBatchSampler(lengths, batch_size, num_replicas=world, rank=r, **kwargs) for r in range(world)]


def _spread(batches, lengths):
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)


def test_each_sample_once_per_epoch_and_len_matches():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(N))
        assert len(batches) == len(sampler) == -(-N // 16)
        assert all(len(b) == 16 for b in batches[:-1])


def test_drop_last_drops_only_the_partial_batch():
    batches = list(LengthGroupedBatchSampler(LENGTHS, batch_size=16, drop_last=True))
    assert len(batches) == N // 16 and all(len(b) == 16 for b in batches)
    assert len({i for b in batches for i in b}) == N // 16 * 16


def test_batches_are_grouped_by_length():
    grouped = list(LengthGroupedBatchSampler(LENGTHS, batch_size=16))
    order = list(range(N))
    random.Random(1).shuffle(order)
    randomly = [order[i : i + 16] for i in range(0, N, 16)]
    assert _spread(grouped, LENGTHS) < 0.1 * _spread(randomly, LENGTHS)


def test_seeded_reproducible_and_epochs_differ():
    first = list(LengthGroupedBatchSampler(LENGTHS, 16, seed=7))
    assert first == list(LengthGroupedBatchSampler(LENGTHS, 16, seed=7))
    assert first != list(LengthGroupedBatchSampler(LENGTHS, 16, seed=8))
    sampler = LengthGroupedBatchSampler(LENGTHS, 16, seed=7)
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("world", [1, 2])
def test_first_step_holds_the_longest_sample(seed, world):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(203)]
    lengths[rng.randrange(203)] = 10_000
    for epoch in range(3):
        samplers = _ranks(lengths, 8, world, seed=seed)
        for s in samplers:
            s.set_epoch(epoch)
        first_step = [i for s in samplers for i in next(iter(s))]
        assert max(range(203), key=lengths.__getitem__) in first_step


def test_longest_sample_in_partial_tail_still_comes_first():
    lengths = [10] * 20 + [1000]  # 21 samples, batch 4: the unshuffled tail is [20]
    first = next(iter(LengthGroupedBatchSampler(lengths, 4, shuffle=False)))
    assert 20 in first
    flat = [i for b in LengthGroupedBatchSampler(lengths, 4, shuffle=False) for i in b]
    assert sorted(flat) == list(range(21))


@pytest.mark.parametrize(("n", "world"), [(N, 2), (N, 3), (49, 3), (50, 4), (1, 2)])
def test_ddp_ranks_cover_everything_with_equal_batch_counts(n, world):
    lengths = LENGTHS[:n]
    per_rank = [list(s) for s in _ranks(lengths, 16, world)]
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(len(batches) == len(s) for batches, s in zip(per_rank, _ranks(lengths, 16, world)))
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(counts) == set(range(n))
    tail = n % (16 * world)
    expected_duplicates = world - tail if 0 < tail < world else 0  # the documented padding
    assert sum(counts.values()) - n == expected_duplicates


def test_ddp_global_batches_match_single_process_order():
    single = LengthGroupedBatchSampler(LENGTHS, 32)
    ranks = _ranks(LENGTHS, 16, 2)
    for global_batch, *rank_batches in zip(single, *ranks):
        assert sorted(i for b in rank_batches for i in b) == sorted(global_batch)


@pytest.mark.parametrize(
    ("world", "old_bs", "new_bs", "steps"), [(1, 8, 5, 7), (1, 8, 4, 10), (2, 8, 3, 5), (2, 4, 16, 3)]
)
def test_resume_with_changed_batch_size_yields_exactly_the_rest(world, old_bs, new_bs, steps):
    before = _ranks(LENGTHS, old_bs, world, seed=3)
    for s in before:
        s.set_epoch(2)
    seen = [i for s in before for b in list(s)[:steps] for i in b]
    state = before[0].state_dict()
    state.update(consumed_samples=steps * old_bs * world, consumed_batches=steps, batch_size=new_bs)

    after = _ranks(LENGTHS, 1, world, seed=0)
    for s in after:
        s.load_state_dict(state)
    rest = [list(s) for s in after]
    assert all(len(batches) == len(s) - steps for batches, s in zip(rest, after))
    flat_rest = [i for batches in rest for b in batches for i in b]
    assert sorted(seen + flat_rest) == list(range(N))
    assert all(len(b) == new_bs for batches in rest for b in batches[:-1])
    # The epoch's order is the same as before the change: the rest is its suffix.
    assert sorted(flat_rest) == sorted(before[0].epoch_order()[steps * old_bs * world :])


def test_resume_on_the_same_object_and_set_epoch_semantics():
    sampler = LengthGroupedBatchSampler(LENGTHS, 10)
    first_three = [i for b in list(sampler)[:3] for i in b]
    for _ in range(3):
        sampler.mark_consumed(10)
    sampler.batch_size = 7
    sampler.set_epoch(0)  # Lightning calls this with the same epoch after a resume: a no-op
    rest = [i for b in sampler for i in b]
    assert sorted(first_three + rest) == list(range(N))
    assert len(sampler) == 3 + -(-(N - 30) // 7)
    sampler.set_epoch(1)
    assert sampler.consumed_samples == 0 and sampler.consumed_batches == 0
    assert sorted(i for b in sampler for i in b) == list(range(N))


@pytest.mark.parametrize("world", [1, 2])
def test_batch_size_change_mid_epoch_applies_from_the_next_batch(world):
    """What OOM recovery does: shrink batch_size while the epoch runs, before the batch in training is marked."""
    ranks = _ranks(LENGTHS, 10, world)
    iterators = [iter(s) for s in ranks]
    first = [next(it) for it in iterators]  # in training, not yet marked consumed
    for s in ranks:
        s.batch_size = 5
    # the batch in flight counts at the size it was handed out with; the rest is cut at the new size
    assert all(len(s) == 1 + -(-(N - 10 * world) // (5 * world)) for s in ranks)
    state = ranks[0].state_dict(unmarked_batches=1)
    assert (state["consumed_samples"], state["consumed_batches"], state["batch_size"]) == (10 * world, 1, 5)
    for s in ranks:
        s.mark_consumed(10)
    rest = [list(it) for it in iterators]
    assert all(len(b) == 5 for batches in rest for b in batches[:-1])
    assert all(len(batches) + 1 == len(s) for batches, s in zip(rest, ranks))
    seen = [i for b in first for i in b] + [i for batches in rest for b in batches for i in b]
    assert sorted(seen) == list(range(N))
    # halving keeps length grouping: each new batch is half of a reference batch of 10 (x world)
    order = ranks[0].epoch_order()
    reference = {i: pos // (10 * world) for pos, i in enumerate(order)}
    for step in zip(*rest):
        assert len({reference[i] for b in step for i in b}) == 1


def test_longest_batch_sampler_repeats_the_longest_samples():
    sampler = LongestBatchSampler(LENGTHS, 7)
    batches = list(sampler)
    longest = sorted(range(N), key=lambda i: -LENGTHS[i])[:7]
    assert len(batches) == len(sampler) == -(-N // 7) and all(b == longest for b in batches)
    with pytest.raises(ValueError, match="batch_size"):
        LongestBatchSampler(LENGTHS, 0)


def test_state_saved_at_epoch_end_starts_the_next_epoch():
    sampler = LengthGroupedBatchSampler(LENGTHS, 10)
    state = {**sampler.state_dict(), "consumed_samples": N, "consumed_batches": 100}
    sampler.load_state_dict(state)
    assert (sampler.epoch, sampler.consumed_samples, len(sampler)) == (1, 0, 100)


def test_state_for_another_dataset_is_refused():
    state = LengthGroupedBatchSampler(LENGTHS, 10).state_dict()
    with pytest.raises(ValueError, match="1000 samples"):
        LengthGroupedBatchSampler(LENGTHS[:10], 10).load_state_dict(state)


def test_refuses_lightnings_distributed_sampler_injection():
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader, SequentialSampler

    loader = DataLoader(list(range(N)), batch_sampler=LengthGroupedBatchSampler(LENGTHS, 10))
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        _update_dataloader(loader, SequentialSampler(range(N)))


def test_lightning_finds_set_epoch():
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    sampler = LengthGroupedBatchSampler(LENGTHS, 10)
    _set_sampler_epoch(DataLoader(list(range(N)), batch_sampler=sampler), 4)
    assert sampler.epoch == 4


@pytest.mark.parametrize(("n", "world"), [(101, 1), (101, 2), (101, 3), (17, 2), (9, 4), (3, 4)])
def test_eval_sampler_sorted_no_duplicates_and_equal_batch_counts(n, world):
    samplers = [SortedEvalBatchSampler(LENGTHS[:n], 8, world, r) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    real = [[i for b in batches for i in b if i < n] for batches in per_rank]
    assert sorted(i for indices in real for i in indices) == list(range(n))  # every sample once
    for batches, sampler, indices in zip(per_rank, samplers, real):
        assert len(batches) == len(sampler) == len(per_rank[0])  # the same number of steps on every rank (FSDP)
        rank_order = [LENGTHS[i] for i in indices]
        assert rank_order == sorted(rank_order, reverse=True)
        padding = [b for b in batches if any(i >= n for i in b)]
        assert all(len(b) == 1 for b in padding) and len(padding) <= 1  # at most one filler batch, of one sample
    assert max(LENGTHS[:n]) in [LENGTHS[i] for i in per_rank[0][0]]


def test_padding_index_resolves_to_a_marked_copy():
    features = [{"index": i, "input_ids": [i]} for i in range(3)]
    dataset = PaddingAwareDataset(features)
    assert len(dataset) == 3 and dataset[1] is features[1]
    assert dataset[3 + 2] == {"index": 2, "input_ids": [2], "is_padding": True}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "--data.batch_size must be > 0"), ({"num_replicas": 2, "rank": 2}, "rank"),
     ({"megabatch_mult": 0}, "megabatch_mult"), ({"bucket": 0}, "bucket")],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LengthGroupedBatchSampler(LENGTHS, **{"batch_size": 4, **kwargs})


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 1000), min_size=1, max_size=300),
    batch_size=st.integers(1, 20),
    new_batch_size=st.integers(1, 20),
    world=st.integers(1, 4),
    drop_last=st.booleans(),
    seed=st.integers(0, 10),
    epoch=st.integers(0, 3),
    consumed_steps=st.integers(0, 40),
)
def test_property_resumed_epoch_covers_each_sample_once(
    lengths, batch_size, new_batch_size, world, drop_last, seed, epoch, consumed_steps
):
    kwargs = {"seed": seed, "drop_last": drop_last, "megabatch_mult": 3}
    ranks = _ranks(lengths, batch_size, world, **kwargs)
    for s in ranks:
        s.set_epoch(epoch)
    full = [list(s) for s in ranks]
    assert len({len(b) for b in full}) == 1 and len(full[0]) == len(ranks[0])
    steps = min(consumed_steps, len(full[0]))
    seen = [i for batches in full for b in batches[:steps] for i in b]
    consumed = min(steps * batch_size * world, len(lengths))

    for s in ranks:
        s.consumed_samples, s.consumed_batches, s.batch_size = consumed, steps, new_batch_size
    rest = [list(s) for s in ranks]
    assert len({len(b) for b in rest}) == 1 and len(rest[0]) + steps == len(ranks[0])
    counts = Counter(seen + [i for batches in rest for b in batches for i in b])
    if drop_last:
        assert all(c == 1 for c in counts.values())
    else:
        assert set(counts) == set(range(len(lengths)))
        assert sum(counts.values()) - len(lengths) < 2 * world  # padding only, at most one tail per phase
    assert all(0 < len(b) <= new_batch_size for batches in rest for b in batches)


# ---- two parts padded separately: seq2seq sources and targets ---------------------------------------------------
def _lognormal(rng: random.Random, median: int, cap: int) -> int:
    return max(4, min(cap, round(median * rng.lognormvariate(0, 0.5))))


_PRNG = random.Random(2)
PARTS = [(_lognormal(_PRNG, 270, 512), _lognormal(_PRNG, 49, 200)) for _ in range(N)]  # independent, as in the benchmark


def _padding_share(batches, bucket):
    """Pad positions / all positions, sources padded to a multiple of ``bucket`` and targets to 8 (the collator's)."""
    padded = real = 0
    for b in batches:
        source = -(-max(PARTS[i][0] for i in b) // bucket) * bucket
        target = -(-max(PARTS[i][1] for i in b) // 8) * 8
        padded += len(b) * (source + target)
        real += sum(sum(PARTS[i]) for i in b)
    return 1 - real / padded


@pytest.mark.parametrize("batch_size", [16, 64])
def test_bucketed_sources_then_targets_pad_less_than_the_total_length(batch_size):
    by_total = list(LengthGroupedBatchSampler(PARTS, batch_size))
    bucketed = list(LengthGroupedBatchSampler(PARTS, batch_size, bucket=64))
    assert sorted(i for b in bucketed for i in b) == list(range(N))
    # these lengths: pad positions 0.26 -> 0.15 of all at batch 16, 0.31 -> 0.22 at batch 64
    assert _padding_share(bucketed, 64) < 0.8 * _padding_share(by_total, 64)
    assert by_total == list(LengthGroupedBatchSampler([sum(p) for p in PARTS], batch_size))


def test_bucketed_first_step_is_the_widest_batch():
    sampler = LengthGroupedBatchSampler(PARTS, 16, bucket=64, seed=5)
    batches = list(sampler)
    widths = [sampler._padded(b) for b in batches]
    assert widths[0] == max(widths)
    source, target = max(p[0] for p in PARTS), max(p[1] for p in PARTS)
    assert sampler._padded(batches[0]) <= -(-source // 64) * 64 + target


@pytest.mark.parametrize(("saved", "configured"), [(64, 32), (None, 64), (64, None)])
def test_a_resumed_epoch_keeps_the_order_it_was_saved_with(saved, configured):
    """The sort is part of the epoch: resuming under another padding multiple (or from a checkpoint made before
    buckets, which has none) yields exactly the samples not yet trained on; the next epoch takes the new setting."""
    before = LengthGroupedBatchSampler(PARTS, 10, seed=3, bucket=saved)
    seen = [i for b in list(before)[:7] for i in b]
    state = {**before.state_dict(), "consumed_samples": 70, "consumed_batches": 7}
    if saved is None:
        del state["bucket"]  # as saved by lit-qsum before this setting
    after = LengthGroupedBatchSampler(PARTS, 10, seed=3, bucket=configured)
    after.load_state_dict(state)
    rest = [i for b in after for i in b]
    assert seen + rest == before.epoch_order()
    after.set_epoch(1)
    fresh = LengthGroupedBatchSampler(PARTS, 10, seed=3, bucket=configured)
    fresh.set_epoch(1)
    assert list(after) == list(fresh) and after.bucket == configured  # the next epoch sorts as configured


def test_longest_batch_sampler_pads_as_wide_as_any_batch():
    """The probe batch holds the longest source and the longest target, which a training batch may pair."""
    parts = [(100, 10)] * 50 + [(500, 5), (60, 200)] + [(300, 60)] * 20
    (probe, *_) = list(LongestBatchSampler(parts, 8))
    assert {50, 51} <= set(probe) and len(probe) == 8
    assert max(parts[i][0] for i in probe) == 500 and max(parts[i][1] for i in probe) == 200


@settings(max_examples=40, deadline=None)
@given(
    parts=st.lists(st.tuples(st.integers(1, 600), st.integers(1, 200)), min_size=1, max_size=200),
    batch_size=st.integers(1, 20),
    new_batch_size=st.integers(1, 20),
    world=st.integers(1, 3),
    bucket=st.sampled_from([1, 8, 64]),
    consumed_steps=st.integers(0, 30),
)
def test_property_bucketed_resume_covers_each_sample_once(parts, batch_size, new_batch_size, world, bucket,
                                                          consumed_steps):
    ranks = _ranks(parts, batch_size, world, seed=1, megabatch_mult=3, bucket=bucket)
    full = [list(s) for s in ranks]
    steps = min(consumed_steps, len(full[0]))
    seen = [i for batches in full for b in batches[:steps] for i in b]
    for s in ranks:
        s.consumed_samples, s.consumed_batches = min(steps * batch_size * world, len(parts)), steps
        s.batch_size = new_batch_size
    rest = [i for s in ranks for b in s for i in b]
    assert set(seen + rest) == set(range(len(parts)))
    assert len(seen + rest) - len(parts) < 2 * world


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch_size", [3, 10, 64])
def test_parts_without_a_bucket_give_the_order_of_their_totals(seed, batch_size):
    """What a checkpoint from before buckets resumes with: (source, target) parts and no bucket order the epoch exactly
    as their totals did, the first batch and the tail's swap included."""
    rng = random.Random(seed)
    parts = [(rng.randint(1, 400), rng.randint(1, 120)) for _ in range(rng.randint(50, 400))]
    for epoch in range(2):
        as_parts = LengthGroupedBatchSampler(parts, batch_size, seed=seed, megabatch_mult=4)
        as_totals = LengthGroupedBatchSampler([sum(p) for p in parts], batch_size, seed=seed, megabatch_mult=4)
        as_parts.set_epoch(epoch)
        as_totals.set_epoch(epoch)
        assert as_parts.epoch_order() == as_totals.epoch_order()
