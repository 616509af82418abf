"""The synthetic corpus: byte-identical regeneration, both languages, entity-carrying summaries."""

from __future__ import annotations

import csv
import re

import pytest

from lit_qsum.data.synthetic import BUNDLED_DIR, SPLIT_SIZES, generate_examples, write_bundled

HANGUL = re.compile("[가-힣]")
# Days, times and numbers are what a summary must copy from its dialogue.
ENTITY = re.compile(r"\d[\d,:]*|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day|[월화수목금토일]요일")


def _rows(split):
    with open(BUNDLED_DIR / f"{split}.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_regeneration_matches_shipped_files(tmp_path):
    write_bundled(tmp_path)
    for split in SPLIT_SIZES:
        assert (tmp_path / f"{split}.csv").read_bytes() == (BUNDLED_DIR / f"{split}.csv").read_bytes(), split


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_shipped_splits_shape(split):
    rows = _rows(split)
    assert len(rows) == SPLIT_SIZES[split]
    assert [r["fname"] for r in rows] == [f"{split}_{i}" for i in range(len(rows))]
    assert ("summary" in rows[0]) == (split != "test")
    korean = sum(bool(HANGUL.search(r["dialogue"])) for r in rows)
    assert korean == len(rows) // 2


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_examples_are_dialogsum_shaped_and_summaries_copy_entities(lang):
    examples = generate_examples(300, lang, seed=5)
    assert examples == generate_examples(300, lang, seed=5)
    assert examples != generate_examples(300, lang, seed=6)
    assert len({e["topic"] for e in examples}) >= 6
    for e in examples:
        lines = e["dialogue"].split("\n")
        assert 3 <= len(lines) <= 8
        assert all(line.startswith(f"#Person{1 + i % 2}#: ") for i, line in enumerate(lines))
        assert 20 <= len(e["dialogue"].split()) <= 120
        assert "\n" not in e["summary"] and e["summary"].endswith(".")
        assert bool(HANGUL.search(e["summary"])) == (lang == "ko")
        entities = ENTITY.findall(e["summary"])
        assert entities, e["summary"]
        for entity in entities:
            assert entity in e["dialogue"], (entity, e)


def test_rejected_proposals_make_the_decision_matter():
    # Some dialogues mention a rejected day besides the agreed one; the summary carries only the latter.
    examples = generate_examples(200, "en", seed=0)
    days = [[d for d in ENTITY.findall(e["dialogue"] + " | " + e["summary"]) if d.endswith("day")] for e in examples]
    ambiguous = [e for e, found in zip(examples, days) if len(set(found)) >= 2]
    assert len(ambiguous) > 30
