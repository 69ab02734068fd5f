"""Table files of sentence pairs: .tsv, .csv, .jsonl and .json, each optionally gzipped.

Read row by row with Python's own `csv` and `json`, so that every fault names its line:

- .tsv: the first line names the columns. After it a tab always separates columns and a
  newline always ends a row; there is no quoting (a quote is ordinary text), so a sentence
  cannot hold a tab or a newline, and a row with another number of columns is an error.
- .csv: RFC 4180. The first row names the columns; a field holding a comma, a quote or a
  line break is quoted ("..."), with each quote inside it doubled ("").
- .jsonl: one JSON object per line; a field is a key or a dotted path into nested objects
  ("translation.de"). A .json file holds the same lines, or one array of such objects.

Lines with no text (blank, or only spaces and separators) are skipped. Values stay text:
"007" and "NA" are not numbers or missing values; only a JSON null is missing (an empty side).
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from transformer.errors import UserError

TABLE_TYPES = (".tsv", ".csv", ".jsonl", ".json")
_CHUNK = 100_000  # rows per Arrow chunk: bounds how many Python strings live at once
_TEXT = pa.large_string()
_Rows = Iterator[tuple[int, list[str]]]  # (line number, cells) of each row
_MISSING = object()  # a JSON field that is absent (None is a JSON null)


class TableError(UserError, ValueError):
    """A table file that breaks its format's rules; the message names the file and the line."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting  # the read_table argument at fault: path, src_field or tgt_field


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when its name ends in .gz."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def table_type(path: Path) -> str | None:
    """The table type of a file name (".tsv", ...; a ".gz" after it is ignored), or None."""
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    return suffix if suffix in TABLE_TYPES else None


def read_table(
    path: Path, src_field: str, tgt_field: str
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The two named fields of every row, in file order, as text (null for a JSON null)."""
    kind = table_type(path)
    if kind is None:
        raise TableError(
            f"cannot tell the table type of {path.name}; "
            "use a .tsv, .csv, .jsonl or .json file (optionally .gz)",
            setting="path",
        )
    fields = (src_field, tgt_field)
    if kind in (".jsonl", ".json"):
        rows = _json_rows(path, fields)
    else:
        rows = _column_rows(path, fields, _tsv_cells(path) if kind == ".tsv" else _csv_cells(path))
    chunks: tuple[list[pa.Array], list[pa.Array]] = ([], [])
    while pairs := list(itertools.islice(rows, _CHUNK)):
        for side, texts in zip(chunks, zip(*pairs, strict=True), strict=True):
            side.append(pa.array(texts, _TEXT))
    return pa.chunked_array(chunks[0], _TEXT), pa.chunked_array(chunks[1], _TEXT)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line, split on "\\n" only; a UTF-8 byte-order mark is dropped."""
    try:
        with open_binary(path) as file:
            for number, raw in enumerate(file, 1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise TableError(
                        f"{path}: line {number} is not valid UTF-8; convert the file to UTF-8"
                    ) from None
    except (OSError, EOFError, zlib.error) as error:
        raise TableError(f"cannot read {path}: {error}") from None


def _tsv_cells(path: Path) -> _Rows:
    for number, line in _lines(path):
        if line.strip():  # a line of only spaces and tabs holds no pair to lose
            yield number, line.removesuffix("\n").removesuffix("\r").split("\t")


def _csv_cells(path: Path) -> _Rows:
    reader = csv.reader((text for _, text in _lines(path)), strict=True)
    while True:
        start = reader.line_num + 1  # a quoted line break makes a row span several lines
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise TableError(
                f"{path}: line {start} is not valid CSV ({error}); a field that holds a comma, "
                'a quote or a line break is quoted, with each quote inside doubled: "say ""hi"""'
            ) from None
        if "".join(cells).strip():  # a row of only spaces and commas holds no pair to lose
            yield start, cells


def _column_rows(path: Path, fields: tuple[str, str], cells: _Rows) -> Iterator[tuple[str, str]]:
    """The pairs of a .tsv or .csv file whose first row names its columns."""
    header_line, header = next(cells, (0, []))
    if not header:
        return  # an empty file: no pairs, which the caller reports
    indices = []
    for setting, field in zip(("src_field", "tgt_field"), fields, strict=True):
        if header.count(field) != 1:
            problem = "has no column" if field not in header else "has more than one column"
            raise TableError(
                f"{path}: the header (line {header_line}) {problem} {field!r}; "
                f"its columns are: {', '.join(header)}",
                setting=setting,
            )
        indices.append(header.index(field))
    hint = (
        "a tab always separates columns and a newline always ends a row (there is no "
        "quoting), so a sentence cannot hold a tab or a line break"
        if table_type(path) == ".tsv"
        else 'a field that holds a comma is quoted: "Ja, gut."'
    )
    for number, row in cells:
        if len(row) != len(header):
            raise TableError(
                f"{path}: line {number} has {_columns(len(row))} but the header (line "
                f"{header_line}) has {len(header)}; {hint}"
            )
        yield row[indices[0]], row[indices[1]]


def _columns(count: int) -> str:
    return f"{count} column" if count == 1 else f"{count} columns"


def _json_rows(path: Path, fields: tuple[str, str]) -> Iterator[tuple[str | None, str | None]]:
    """The pairs of a .jsonl file (or a .json file: the same lines, or one array of objects)."""
    for where, record in _json_records(path):
        if not isinstance(record, dict):
            raise TableError(
                f"{path}: {where} holds a JSON {_json_kind(record)}, not an object; each line "
                'must be one object such as {"src": "...", "tgt": "..."}'
            )
        pair = []
        for setting, field in zip(("src_field", "tgt_field"), fields, strict=True):
            value = _json_field(record, field)
            if value is _MISSING:
                raise TableError(
                    f"{path}: {where} has no field {field!r}; its fields are: "
                    f"{', '.join(_leaf_names(record))}",
                    setting=setting,
                )
            if value is not None and not isinstance(value, str):
                raise TableError(
                    f"{path}: {where}: field {field!r} holds a JSON {_json_kind(value)}, not "
                    'text; write the sentence as a JSON string ("...")'
                )
            pair.append(value)
        yield pair[0], pair[1]


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    """("line N", value) for each non-blank line, or ("item N", value) for a .json array."""
    lines = _lines(path)
    for number, line in lines:
        if not line.strip():
            continue
        if line.lstrip().startswith("[") and table_type(path) == ".json":
            # JSON text that starts with "[" can only be an array: a list
            array = _json_value(path, line + "".join(rest for _, rest in lines), number)
            for index, record in enumerate(array, 1):  # type: ignore[arg-type]
                yield f"item {index} of the array", record
            return
        yield f"line {number}", _json_value(path, line, number)


def _json_value(path: Path, text: str, first_line: int) -> object:
    """The JSON value of `text`, which starts on line `first_line` of the file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = first_line + error.lineno - 1
        raise TableError(
            f"{path}: line {line} is not valid JSON ({error.msg}, column {error.colno}); each "
            'line must be one object such as {"src": "...", "tgt": "..."}'
        ) from None


def _json_field(record: dict, field: str) -> object:
    """The value at a key, or at a dotted path into nested objects; _MISSING if there is none."""
    if field in record:
        return record[field]
    value: object = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _json_kind(value: object) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _leaf_names(record: dict, prefix: str = "") -> list[str]:
    names = []
    for name, value in record.items():
        if isinstance(value, dict) and value:
            names.extend(_leaf_names(value, f"{prefix}{name}."))
        else:
            names.append(f"{prefix}{name}")
    return names
