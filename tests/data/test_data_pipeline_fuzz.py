"""Arbitrary Unicode text survives CSV → load_records → demo tokenizer → collator."""

from __future__ import annotations

import csv

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_qsum.data.collate import CausalCollator, Seq2SeqCollator
from lit_qsum.data.features import causal_features, seq2seq_features
from lit_qsum.data.formats import ColumnMap, load_records

TEXT = st.text(min_size=1, max_size=80).filter(str.strip)


def _normalized(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6), crlf=st.booleans(), bom=st.booleans())
def test_any_text_round_trips_through_the_pipeline(tmp_path, demo_tokenizer, pairs, crlf, bom):
    path = tmp_path / "fuzz.csv"
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        # csv's minimal quoting leaves a lone "\r" unquoted unless it is in the line terminator.
        quoting = csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL
        writer = csv.writer(f, lineterminator="\r\n" if crlf else "\n", quoting=quoting)
        writer.writerow(["fname", "dialogue", "summary"])
        writer.writerows([f"id{i}", d, s] for i, (d, s) in enumerate(pairs))

    records = load_records(str(path), ColumnMap(), require_summary=True)
    assert [(r.dialogue, r.references) for r in records] == [(_normalized(d), [_normalized(s)]) for d, s in pairs]

    features, _ = seq2seq_features(records, demo_tokenizer, 64, 32, with_labels=True, source="fuzz")
    batch = Seq2SeqCollator(demo_tokenizer.pad_token_id)(features)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] <= 64
    assert (batch["labels"][:, 0] != -100).all()

    template = "Summarize:\n{dialogue}\nSummary: "
    features, _ = causal_features(records, demo_tokenizer, template, 64, 32, with_labels=True, source="fuzz")
    batch = CausalCollator(demo_tokenizer.pad_token_id)(features)
    assert batch["prompt_input_ids"].shape[1] <= 64 and batch["input_ids"].shape[1] <= 96
    assert (batch["labels"] != -100).sum(1).ge(1).all()
