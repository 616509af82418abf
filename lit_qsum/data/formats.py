"""Reads dialogue–summary data from CSV, JSONL/JSON or Hugging Face datasets into ``Record``s.

Every problem raises ``DataFormatError`` naming the file, the 1-based line or row, the column and
the ``--data.*`` flag or edit that fixes it, so a bad row in a 12k-row file is found in seconds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lit_qsum.data.tokenizer import is_plausible_hub_id
from lit_qsum.errors import UserInputError

FILE_SUFFIXES = (".csv", ".jsonl", ".json")
_FLAGS = {"id": "--data.id_column", "dialogue": "--data.dialogue_column", "summary": "--data.summary_columns"}


class DataFormatError(UserInputError):
    """A data file or dataset that cannot be read as dialogue–summary records; the message says where and why."""


@dataclass
class ColumnMap:
    """Which columns (CSV) or keys (JSON, datasets) hold the id, dialogue, reference summaries and topic."""

    id_column: str = "fname"
    dialogue_column: str = "dialogue"
    summary_columns: list[str] = field(default_factory=lambda: ["summary"])
    topic_column: str | None = "topic"

    def __post_init__(self) -> None:
        if not self.summary_columns:
            raise UserInputError("--data.summary_columns must name at least one column, got []")


@dataclass
class Record:
    """One dialogue with its reference summaries (empty when the source has none)."""

    fname: str
    dialogue: str
    references: list[str]
    topic: str | None = None


@dataclass
class _Table:
    origin: str  # the file or dataset name used in messages
    columns: list[str] | None  # known up front for CSV and datasets; None for JSON (per-line keys)
    rows: Iterator[tuple[str, Mapping[str, Any]]]  # (location such as "line 4", row)


def load_records(source: str, columns: ColumnMap, require_summary: bool, split: str = "train") -> list[Record]:
    """Loads a ``.csv``/``.jsonl``/``.json`` file or a Hugging Face dataset (name or ``save_to_disk`` dir)."""
    path = Path(source)
    if path.suffix.lower() in FILE_SUFFIXES:
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "file not found"
            raise DataFormatError(f"{source}: {what} (working directory: {Path.cwd()})")
        text = _read_utf8(path)
        table = _csv_table(source, text) if path.suffix.lower() == ".csv" else _json_table(source, text)
    elif path.exists() or is_plausible_hub_id(source):
        table = _dataset_table(source, split)
    else:
        raise DataFormatError(
            f"{source}: not found. Expected a .csv, .jsonl or .json file, a directory written by "
            "datasets' save_to_disk, or a Hugging Face dataset name such as 'knkarthick/dialogsum'."
        )
    return _to_records(table, columns, require_summary, split)


def _read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:  # permissions, a file vanished or locked mid-run, an I/O error of the disk
        raise DataFormatError(f"{path}: can't read the file ({err.strerror or err})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(f"{path}: file is UTF-16 (Excel 'Unicode Text'); re-save it as UTF-8 (CSV UTF-8).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        hint = "re-save it as UTF-8 (in Excel: 'CSV UTF-8')"
        try:
            raw.decode("cp949")
            hint += "; it decodes as CP949/EUC-KR, so `iconv -f cp949 -t utf-8 IN > OUT` converts it"
        except UnicodeDecodeError:
            pass
        raise DataFormatError(
            f"{path}: not valid UTF-8 at byte offset {err.start} (line {line}): "
            f"{raw[err.start : err.start + 4]!r}; {hint}."
        ) from None
    text = text.removeprefix("\ufeff")  # Excel's UTF-8 BOM
    if not text.strip():
        raise DataFormatError(f"{path}: file is empty.")
    return text


def _csv_table(origin: str, text: str) -> _Table:
    # Dialogues can exceed the csv module's 128 KiB default field limit; raising it is harmless.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except csv.Error as err:
        raise DataFormatError(f"{origin}, line 1: cannot parse the CSV header ({err}).") from None
    if len(set(header)) != len(header):
        dupes = sorted({name for name in header if header.count(name) > 1})
        raise DataFormatError(f"{origin}, line 1: duplicate column names in the header: {dupes}.")

    def rows() -> Iterator[tuple[str, Mapping[str, Any]]]:
        record, start = 0, reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise DataFormatError(
                    f"{origin}, line {start}: CSV syntax error ({err}); check for an unclosed quote."
                ) from None
            if cells:  # blank lines between rows are skipped
                record += 1
                where = f"line {start} (record {record})"
                if len(cells) != len(header):
                    raise DataFormatError(
                        f"{origin}, {where}: {len(cells)} fields but the header has {len(header)}; "
                        "quote fields that contain commas or line breaks."
                    )
                yield where, dict(zip(header, cells))
            start = reader.line_num + 1

    return _Table(origin, header, rows())


def _json_table(origin: str, text: str) -> _Table:
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{origin}, line {err.lineno}: not valid JSON ({err.msg}).") from None
        located = [(f"item {i + 1}", item) for i, item in enumerate(items)]
    else:
        located = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    f"{origin}, line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                    "JSONL needs one complete JSON object per line."
                ) from None
    for where, item in located:
        if not isinstance(item, dict):
            raise DataFormatError(f"{origin}, {where}: expected a JSON object, got {type(item).__name__}.")
    if not located:
        raise DataFormatError(f"{origin}: file is empty.")
    return _Table(origin, None, iter(located))


def _dataset_table(source: str, split: str) -> _Table:
    import datasets  # deferred: importing datasets costs seconds and CSV/JSONL users never need it

    path = Path(source)
    try:
        if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(source)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataFormatError(
                        f"{source}: no split {split!r}; splits present: {sorted(loaded)}. "
                        "Set --data.train_split / --data.val_split / --data.test_split."
                    )
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(source, split=split)
    except DataFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - hub, cache and format errors all mean "unusable source"
        local = "" if path.exists() else f" There is no local path {source!r} either."
        raise DataFormatError(
            f"{source}: could not load split {split!r} as a Hugging Face dataset ({type(err).__name__}: {err}).{local}"
        ) from err
    rows = ((f"row {i + 1}", row) for i, row in enumerate(loaded))
    return _Table(source, list(loaded.column_names), rows)


def _to_records(table: _Table, columns: ColumnMap, require_summary: bool, split: str) -> list[Record]:
    origin = table.origin
    if table.columns is not None:
        needed = [("dialogue", columns.dialogue_column)]
        needed += [("summary", name) for name in columns.summary_columns] if require_summary else []
        for role, name in needed:
            if name not in table.columns:
                raise DataFormatError(
                    f"{origin}: missing {role} column {name!r}; columns present: {table.columns}. "
                    f"Set {_FLAGS[role]} to the right column."
                )

    records: list[Record] = []
    seen: dict[str, str] = {}
    synthesized = 0
    for index, (where, row) in enumerate(table.rows):
        # No id column (common in HF datasets and hand-made files): ids only need to be unique.
        synthesized += columns.id_column not in row
        record = _to_record(origin, where, row, columns, require_summary, fallback_id=f"{split}_{index}")
        if record.fname in seen:
            raise DataFormatError(
                f"{origin}: duplicate {columns.id_column} {record.fname!r} at {seen[record.fname]} and {where}; "
                f"ids must be unique (set {_FLAGS['id']} if another column is the id)."
            )
        seen[record.fname] = where
        records.append(record)
    if not records:
        raise DataFormatError(f"{origin}: no data rows (only a header).")
    if synthesized:
        rank_zero_info(
            f"{origin}: {synthesized} rows have no {columns.id_column!r} ({_FLAGS['id']}); "
            f"named them {split}_<row index>"
        )
    return records


def _clean(origin: str, where: str, column: str, value: Any, role: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(
            f"{origin}, {where}, column {column!r}: expected {role} text, got {type(value).__name__} {value!r}."
        )
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


def _to_record(
    origin: str, where: str, row: Mapping[str, Any], columns: ColumnMap, require_summary: bool, fallback_id: str
) -> Record:
    """Validates one row; ``fallback_id`` names it when it has no id column."""

    def fail(column: str, problem: str) -> DataFormatError:
        return DataFormatError(f"{origin}, {where}, column {column!r}: {problem}")

    def missing(column: str, role: str) -> DataFormatError:
        return fail(column, f"missing; keys present: {sorted(row)}. Set {_FLAGS[role]} to the right key.")

    if columns.dialogue_column not in row:
        raise missing(columns.dialogue_column, "dialogue")
    dialogue = _clean(origin, where, columns.dialogue_column, row[columns.dialogue_column], "dialogue")
    if not dialogue:
        raise fail(columns.dialogue_column, "empty dialogue; fill it in or remove the row.")

    references: list[str] = []
    for column in columns.summary_columns:
        if column not in row:
            if require_summary:
                raise missing(column, "summary")
            continue
        value = row[column]
        items = value if isinstance(value, list) else [value]  # JSON lists hold several references
        if require_summary and not items:
            raise fail(column, "empty list of summaries; give at least one.")
        for i, item in enumerate(items):
            label = f"{column}[{i}]" if isinstance(value, list) else column
            text = _clean(origin, where, label, item, "summary")
            if text:
                references.append(text)
            elif require_summary:
                raise fail(label, "empty summary; fill it in or remove the row (summaries are required here).")

    fname = fallback_id
    if columns.id_column in row:
        fname = str(row[columns.id_column]).strip() if row[columns.id_column] is not None else ""
        if not fname:
            raise fail(columns.id_column, f"empty id; every row needs a unique id ({_FLAGS['id']}).")

    topic = row.get(columns.topic_column) if columns.topic_column else None
    topic = (topic.strip() or None) if isinstance(topic, str) else None
    return Record(fname=fname, dialogue=dialogue, references=references, topic=topic)
