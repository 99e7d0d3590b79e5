"""Read rows from JSONL, JSON (array), CSV and Parquet files, each with its line or row number.

Readers stream: they yield (line, value) where value is the parsed row, or a RowError for a
row that could not be parsed, so one bad line never hides the rest of the file.
"""

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class RowError:
    code: str
    message: str


def file_kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .jsonl, .json, .csv or .parquet"
        )
    return kind


def read_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = {"jsonl": _jsonl, "json": _json_array, "csv": _csv, "parquet": _parquet}[file_kind(path)]
    yield from reader(path)


def _jsonl(path: Path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except json.JSONDecodeError as exc:
                yield n, RowError("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")


def _json_array(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i, line, n = 0, 1, len(text)

    def skip_ws(i):
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def advance(to):  # keep the line count in step with the cursor
        nonlocal i, line
        line += text.count("\n", i, to)
        i = to

    advance(skip_ws(0))
    if i >= n or text[i] != "[":
        raise DataError(f"{path}:{line}: a .json dataset must be one JSON array of examples (use .jsonl for one per line)")
    advance(skip_ws(i + 1))
    if i < n and text[i] == "]":
        return
    while i < n:
        start_line = line
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            yield exc.lineno, RowError("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
            return  # the array's structure is lost after a syntax error
        advance(end)
        yield start_line, value
        advance(skip_ws(i))
        if i < n and text[i] == ",":
            advance(skip_ws(i + 1))
        elif i < n and text[i] == "]":
            return
        else:
            yield line, RowError("invalid_json", "invalid JSON: expected ',' or ']' after an element")
            return


def _csv(path: Path):
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        while True:
            start = reader.line_num + 1  # the file line this row starts on (line 1 is the header)
            cells = next(reader, None)
            if cells is None:
                return
            if not cells:  # a blank line: no row, but it counts as a line
                continue
            row = dict(zip(header, cells))
            for k in header[len(cells):]:
                row[k] = None  # a short row, as csv.DictReader fills it
            yield start, {k: _maybe_json(v) for k, v in row.items()}


def _maybe_json(cell):
    """CSV cells holding lists or objects (messages, conversations, tools) are JSON text."""
    if isinstance(cell, str) and cell[:1] in "[{":
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, {k: _maybe_json(v) for k, v in record.items()}
