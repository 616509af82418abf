"""Seq2SeqCollator and CausalCollator: padding multiples, -100 masking, left-padded prompts."""

from __future__ import annotations

import pytest
import torch

from lit_qsum.data.collate import IGNORE_INDEX, CausalCollator, Seq2SeqCollator

PAD = 0


def test_seq2seq_pads_to_multiple_and_masks_labels():
    features = [
        {"input_ids": [5, 6, 7, 1], "labels": [8, 1], "index": 3},
        {"input_ids": [5, 1], "labels": [9, 9, 9, 1], "index": 0},
    ]
    batch = Seq2SeqCollator(PAD, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].shape == (2, 8)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 1, 0, 0, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [9, 9, 9, 1] + [IGNORE_INDEX] * 4
    assert batch["index"].tolist() == [3, 0]
    assert batch["num_tokens"].item() == 6 + 6 and batch["num_tokens"].dim() == 0


def test_seq2seq_without_labels_for_predict():
    batch = Seq2SeqCollator(PAD, pad_to_multiple_of=4)([{"input_ids": [4, 4, 4, 4, 1], "index": 0}])
    assert "labels" not in batch and batch["input_ids"].shape == (1, 8)
    assert batch["num_tokens"].item() == 5


def test_pad_id_that_also_appears_in_the_text_is_not_masked():
    # A decoder-only tokenizer may use eos as pad: attention comes from lengths, not ids.
    batch = Seq2SeqCollator(pad_token_id=1)([{"input_ids": [3, 1], "labels": [1], "index": 0}])
    assert batch["attention_mask"][0, :2].tolist() == [1, 1] and batch["labels"][0, 0].item() == 1


def test_causal_masks_prompt_and_left_pads_prompts():
    eos = 2
    features = [
        {"prompt_ids": [10, 11, 12], "target_ids": [20, eos], "index": 0},
        {"prompt_ids": [10], "target_ids": [21, 22, 23, eos], "index": 1},
    ]
    batch = CausalCollator(pad_token_id=eos, pad_to_multiple_of=4)(features)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 20, eos, eos, eos, eos]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 3 + [20, eos] + [IGNORE_INDEX] * 3
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 21, 22, 23, eos] + [IGNORE_INDEX] * 3
    assert batch["attention_mask"].sum(1).tolist() == [5, 5]
    assert batch["prompt_input_ids"].tolist() == [[eos, 10, 11, 12], [eos, eos, eos, 10]]
    assert batch["prompt_attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["num_tokens"].item() == 10


def test_causal_predict_has_only_prompts():
    batch = CausalCollator(0, 8)([{"prompt_ids": [5, 6], "index": 4}])
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "index", "num_tokens"}


def test_mixed_labels_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="labels"):
        Seq2SeqCollator(0)([{"input_ids": [1], "labels": [1], "index": 0}, {"input_ids": [1], "index": 1}])
    with pytest.raises(ValueError, match="--data.pad_to_multiple_of"):
        CausalCollator(0, pad_to_multiple_of=0)


def test_num_tokens_counts_what_each_task_trains_on_and_chunks_recount_it():
    from lit_qsum.steps import split_batch

    seq2seq = Seq2SeqCollator(pad_token_id=0, pad_to_multiple_of=1)(
        [{"input_ids": [5, 6, 7], "labels": [8, 9], "index": 0}, {"input_ids": [5], "labels": [8], "index": 1}])
    assert int(seq2seq["num_tokens"]) == (3 + 1) + (2 + 1)  # inputs + label tokens
    causal = CausalCollator(pad_token_id=0, pad_to_multiple_of=1)(
        [{"prompt_ids": [5, 6], "target_ids": [7], "index": 0}, {"prompt_ids": [5], "target_ids": [7, 8], "index": 1}])
    assert int(causal["num_tokens"]) == 3 + 3  # prompt + summary rows
    predict = CausalCollator(pad_token_id=0, pad_to_multiple_of=1)([{"prompt_ids": [5, 6], "index": 0}])
    assert int(predict["num_tokens"]) == 2  # prompts alone
    for batch in (seq2seq, causal):
        parts = split_batch(batch, 1)
        assert sum(int(p["num_tokens"]) for p in parts) == int(batch["num_tokens"])


def test_causal_target_rows_are_the_shifted_label_tokens() -> None:
    """``target_positions``/``target_labels``: each row's label tokens after the causal shift, in order, padded."""
    import random

    from lit_qsum.data.collate import CausalCollator

    rng = random.Random(7)
    features = [{"prompt_ids": [rng.randrange(5, 50) for _ in range(rng.randint(0, 20))],
                 "target_ids": [rng.randrange(5, 50) for _ in range(rng.randint(1, 12))], "index": i} for i in range(9)]
    batch = CausalCollator(pad_token_id=0, pad_to_multiple_of=8)(features)
    positions, targets = batch["target_positions"], batch["target_labels"]
    assert positions.shape == targets.shape == (9, 16)
    shifted = batch["labels"][:, 1:]
    for row, f in enumerate(features):
        valid = targets[row] != -100
        want = shifted[row][shifted[row] != -100]
        assert targets[row][valid].tolist() == want.tolist()  # the same tokens, in order
        assert shifted[row][positions[row][valid]].tolist() == want.tolist()  # read where the shift puts them
        assert len(want) == len(f["target_ids"]) - (1 if not f["prompt_ids"] else 0)


def test_summaries_pad_to_their_own_multiple() -> None:
    """``target_pad_to_multiple_of``: labels (seq2seq) and the summary rows of the causal loss pad to it; the dialogue
    and the prompt+summary rows keep ``pad_to_multiple_of``."""
    from lit_qsum.data.collate import CausalCollator, Seq2SeqCollator

    seq2seq = [{"input_ids": list(range(5, 75)), "labels": list(range(5, 23)), "index": 0},
               {"input_ids": list(range(5, 40)), "labels": list(range(5, 12)), "index": 1}]
    batch = Seq2SeqCollator(0, 64, target_pad_to_multiple_of=8)(seq2seq)
    assert batch["input_ids"].shape == (2, 128) and batch["labels"].shape == (2, 24)
    assert Seq2SeqCollator(0, 64)(seq2seq)["labels"].shape == (2, 64)  # None: the same multiple
    causal = [{"prompt_ids": list(range(5, 75)), "target_ids": list(range(5, 23)), "index": 0}]
    batch = CausalCollator(0, 64, target_pad_to_multiple_of=8)(causal)
    assert batch["input_ids"].shape == (1, 128) and batch["target_positions"].shape == (1, 24)
    with pytest.raises(ValueError, match="target_pad_to_multiple_of"):
        Seq2SeqCollator(0, 64, target_pad_to_multiple_of=0)
