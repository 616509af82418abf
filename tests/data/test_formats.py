"""load_records: CSV/JSONL/JSON/Hugging Face sources and every DataFormatError case."""

from __future__ import annotations

import json
import re

import pytest

from lit_qsum.data.formats import ColumnMap, DataFormatError, load_records

COLUMNS = ColumnMap()
HEADER = "fname,dialogue,summary,topic\n"


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def _error(source, columns=COLUMNS, require_summary=True, split="train"):
    with pytest.raises(DataFormatError) as info:
        load_records(source, columns, require_summary, split)
    return str(info.value)


def test_bom_crlf_and_quoted_multiline_fields(tmp_path):
    text = (
        '\ufefffname,dialogue,summary\r\n'
        'a1,"#Person1#: Hi\r\n#Person2#: Hello, there","They, greet."\r\n'
        "b2,안녕,인사한다\r\n"
    )
    records = load_records(_write(tmp_path, "d.csv", text), COLUMNS, require_summary=True)
    assert [r.fname for r in records] == ["a1", "b2"]
    assert records[0].dialogue == "#Person1#: Hi\n#Person2#: Hello, there"
    assert records[0].references == ["They, greet."] and records[0].topic is None
    assert records[1].dialogue == "안녕"


def test_multiple_reference_columns(tmp_path):
    text = "fname,dialogue,summary1,summary2,summary3,topic\nx,d,s1,s2,s3,food\n"
    columns = ColumnMap(summary_columns=["summary1", "summary2", "summary3"])
    (record,) = load_records(_write(tmp_path, "t.csv", text), columns, require_summary=True)
    assert record.references == ["s1", "s2", "s3"] and record.topic == "food"


def test_predict_files_need_no_summary(tmp_path):
    (record,) = load_records(_write(tmp_path, "p.csv", "fname,dialogue\nx,d\n"), COLUMNS, require_summary=False)
    assert record.references == []


def test_jsonl_with_list_summaries_and_blank_lines(tmp_path):
    lines = [
        json.dumps({"fname": "a", "dialogue": "d1", "summary": ["r1", "r2"]}),
        "",
        json.dumps({"fname": "b", "dialogue": "d2", "summary": "r3", "topic": "t"}),
    ]
    records = load_records(_write(tmp_path, "d.jsonl", "\r\n".join(lines) + "\r\n"), COLUMNS, True)
    assert [r.references for r in records] == [["r1", "r2"], ["r3"]]
    assert records[1].topic == "t"


def test_json_array_file(tmp_path):
    text = json.dumps([{"id": 1, "dialogue": "d", "summary": "s"}])
    (record,) = load_records(_write(tmp_path, "d.json", text), ColumnMap(id_column="id"), True)
    assert record.fname == "1"


def test_missing_id_column_is_synthesized(tmp_path):
    records = load_records(_write(tmp_path, "d.csv", "dialogue,summary\nd1,s1\nd2,s2\n"), COLUMNS, True, "dev")
    assert [r.fname for r in records] == ["dev_0", "dev_1"]


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    data = {"id": ["x", "y"], "dialogue": ["#Person1#: hi", "#Person1#: 안녕"], "summary": ["s", "요약"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "single"))
    records = load_records(str(tmp_path / "single"), ColumnMap(id_column="id"), True)
    assert [(r.fname, r.references) for r in records] == [("x", ["s"]), ("y", ["요약"])]

    no_id = datasets.Dataset.from_dict({"dialogue": ["a", "b"], "summary": ["s", "t"]})
    datasets.DatasetDict({"validation": no_id}).save_to_disk(str(tmp_path / "dict"))
    records = load_records(str(tmp_path / "dict"), ColumnMap(id_column="id"), True, split="validation")
    assert [r.fname for r in records] == ["validation_0", "validation_1"]
    message = _error(str(tmp_path / "dict"), split="train")
    assert "no split 'train'" in message and "validation" in message


def _has(message, *parts):
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_file_not_found(tmp_path):
    _has(_error(str(tmp_path / "nope.csv")), "nope.csv", "file not found")
    _has(_error(str(tmp_path / "no" / "such" / "place")), "not found")


def test_empty_files(tmp_path):
    _has(_error(_write(tmp_path, "e.csv", "")), "e.csv", "empty")
    _has(_error(_write(tmp_path, "bom.csv", "\ufeff\r\n")), "bom.csv", "empty")
    _has(_error(_write(tmp_path, "h.csv", HEADER)), "h.csv", "no data rows")
    _has(_error(_write(tmp_path, "e.jsonl", "\n\n")), "e.jsonl", "empty")


def test_non_utf8_names_offset_line_and_fix(tmp_path):
    path = _write(tmp_path, "k.csv", HEADER + "a,안녕하세요,인사\n", encoding="cp949")
    message = _error(path)
    _has(message, "k.csv", "not valid UTF-8", "byte offset 31", "line 2", "UTF-8", "CP949")
    _has(_error(_write(tmp_path, "u.csv", HEADER, encoding="utf-16")), "u.csv", "UTF-16")


def test_missing_columns_list_present_and_flag(tmp_path):
    message = _error(_write(tmp_path, "m.csv", "fname,text,summary\na,b,c\n"))
    _has(message, "m.csv", "'dialogue'", "--data.dialogue_column", "fname", "text")
    message = _error(_write(tmp_path, "s.csv", "fname,dialogue\na,b\n"))
    _has(message, "s.csv", "'summary'", "--data.summary_columns")
    message = _error(_write(tmp_path, "j.jsonl", '{"fname": "a", "dialog": "x", "summary": "y"}\n'))
    _has(message, "j.jsonl", "line 1", "'dialogue'", "--data.dialogue_column", "dialog")


def test_empty_dialogue_or_summary_names_row_and_column(tmp_path):
    text = HEADER + 'a,d,s,t\nb,"d\nd",s,t\nc,"  ",s,t\n'
    _has(_error(_write(tmp_path, "d.csv", text)), "d.csv", "line 5 (record 3)", "column 'dialogue'", "empty")
    text = HEADER + "a,d,s,t\nb,d, ,t\n"
    _has(_error(_write(tmp_path, "s.csv", text)), "s.csv", "line 3 (record 2)", "column 'summary'", "empty")
    text = json.dumps({"fname": "a", "dialogue": "d", "summary": ["ok", ""]})
    _has(_error(_write(tmp_path, "l.jsonl", text)), "l.jsonl", "line 1", "summary[1]", "empty")


def test_duplicate_fname_names_both_rows(tmp_path):
    text = HEADER + "a,d,s,t\nb,d,s,t\na,d,s,t\n"
    _has(_error(_write(tmp_path, "dup.csv", text)), "dup.csv", "'a'", "line 2 (record 1)", "line 4 (record 3)")


def test_invalid_json_line(tmp_path):
    text = json.dumps({"fname": "a", "dialogue": "d", "summary": "s"}) + '\n{"fname": "b", "dialogue": \n'
    _has(_error(_write(tmp_path, "bad.jsonl", text)), "bad.jsonl", "line 2", "not valid JSON")
    _has(_error(_write(tmp_path, "arr.jsonl", "[1, 2]\n")), "arr.jsonl", "expected a JSON object")


def test_wrong_field_count_and_wrong_types(tmp_path):
    _has(_error(_write(tmp_path, "f.csv", HEADER + "a,d,s,t,extra\n")), "f.csv", "line 2", "5 fields", "header has 4")
    text = json.dumps({"fname": "a", "dialogue": 3, "summary": "s"})
    _has(_error(_write(tmp_path, "t.jsonl", text)), "t.jsonl", "line 1", "column 'dialogue'", "int")


def test_error_messages_are_single_readable_lines(tmp_path):
    message = _error(_write(tmp_path, "x.csv", HEADER + "a,,s,t\n"))
    assert re.match(r"^\S*x\.csv, line 2 \(record 1\), column 'dialogue': ", message)
    assert isinstance(DataFormatError("x"), ValueError)
