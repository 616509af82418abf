"""The demo tokenizer and load_tokenizer: T5 conventions, round trips, helpful errors."""

from __future__ import annotations

import time

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lit_qsum.data.demo_tokenizer import build_demo_tokenizer, build_demo_tokenizer_json
from lit_qsum.data.tokenizer import load_tokenizer


def test_t5_conventions(demo_tokenizer):
    assert (demo_tokenizer.pad_token_id, demo_tokenizer.eos_token_id, demo_tokenizer.unk_token_id) == (0, 1, 2)
    ids = demo_tokenizer("#Person1#: hi")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1
    assert demo_tokenizer.convert_ids_to_tokens(ids[0]) == "#Person1#"
    assert 3000 < len(demo_tokenizer) <= 4000


@pytest.mark.parametrize(
    "text",
    [
        "#Person1# books a table for 4 at Luigi's on Friday at 7 pm.",
        "#Person1#은 금요일 오후 7시에 루이지 식당에 4명 자리를 예약한다.",
        "#Person1#: 안녕하세요, 뷁 😀!\n#Person2#: Hi   there\n#Person3#: 끝",
    ],
)
def test_decode_round_trips_and_keeps_speaker_tags(demo_tokenizer, text):
    ids = demo_tokenizer(text)["input_ids"]
    assert demo_tokenizer.unk_token_id not in ids  # byte fallback covers unseen characters
    assert demo_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_korean_is_tokenized_into_words_not_bytes(demo_tokenizer):
    tokens = demo_tokenizer.tokenize("금요일 오후 7시에 예약한다.")
    assert len(tokens) <= 6 and not any(t.startswith("<0x") for t in tokens)


def test_fast_and_deterministic():
    start = time.perf_counter()
    build_demo_tokenizer()
    assert time.perf_counter() - start < 2.0
    assert build_demo_tokenizer_json() == build_demo_tokenizer_json()


def test_load_demo_is_memoized_but_returns_independent_objects():
    first, second = load_tokenizer("lit_qsum:demo"), load_tokenizer("lit_qsum:demo")
    assert first is not second and first.get_vocab() == second.get_vocab()
    first.padding_side = "left"
    assert second.padding_side == "right"


def test_saved_tokenizer_loads_from_a_directory(demo_tokenizer, tmp_path):
    demo_tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    text = "#Person2#는 토요일 오후 8시 30분에 도착한다."
    assert loaded(text)["input_ids"] == demo_tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text


def test_pad_falls_back_to_eos(tmp_path):
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == 1


@pytest.mark.parametrize("spec", ["./no/such/tokenizer", "/definitely/missing", "a/b/c", "bad name!"])
def test_impossible_specs_raise_with_the_flag(spec):
    with pytest.raises(ValueError, match="--model.tokenizer") as info:
        load_tokenizer(spec)
    assert spec in str(info.value) and "lit_qsum:demo" in str(info.value)


def test_failing_load_raises_with_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--model.tokenizer .* could not be loaded"):
        load_tokenizer(str(tmp_path))
