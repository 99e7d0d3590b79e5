"""Read rows from JSONL, JSON (array), CSV and Parquet files, each with its line or row number.

Readers stream: they yield (line, value) where value is the parsed row, or a RowError for a
row that could not be parsed, so one bad line never hides the rest of the file.

Text is UTF-8, strictly: bytes that are not are an `invalid_utf8` error naming the line (and
column) that holds them, never silently replaced. JSONL lines end at b"\n" only (JSON Lines);
CSV lines end where `open(newline="")` ends them (\n, \r\n or a lone \r).

A JSON syntax error names the line and column of the problem: a JSONL line is parsed without its
line end, so a truncated row is reported at its own end, not at column 1 of the next line; in a
.json array, a missing token that the parser only notices on a later line (a truncated element,
a missing comma, a trailing comma, a missing ']') is reported right after the last token before
it. A .json file holds exactly one array: a missing ']' or anything after it is an error.
"""

import csv
import json
import re
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


def _bad_utf8(raw: bytes, exc: UnicodeDecodeError, start_line: int | None = None) -> RowError:
    """The invalid-UTF-8 error of one line `raw`; `start_line` is the line its example starts on, if another."""
    column = len(raw[:exc.start].decode("utf-8")) + 1
    where = f" (in the example starting on line {start_line})" if start_line else ""
    return RowError("invalid_utf8", f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at column {column}{where}; "
                                    "save the file as UTF-8")


def _jsonl(path: Path):
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield n, _bad_utf8(raw, exc)
                continue
            if not text.strip():
                continue
            try:
                yield n, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield n, RowError("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")


# Undecodable bytes, kept by surrogateescape as lone surrogates, which valid UTF-8 never decodes to.
_ESCAPED = re.compile("[\udc80-\udcff]")


def _escaped_bad_utf8(text: str, at: int, start_line: int | None = None) -> tuple[int, RowError]:
    """(line, error) for the undecodable byte at text[at] (decoded with surrogateescape)."""
    line_end = text.find("\n", at)
    raw = text[text.rfind("\n", 0, at) + 1:line_end if line_end >= 0 else len(text)]
    raw = raw.encode("utf-8", "surrogateescape")  # the line's bytes as they are in the file
    line = text.count("\n", 0, at) + 1
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return line, _bad_utf8(raw, exc, start_line if start_line != line else None)
    raise AssertionError("no undecodable byte on this line")  # pragma: no cover


def _json_array(path: Path):
    text = path.read_bytes().decode("utf-8", "surrogateescape")
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
    if i < n and _ESCAPED.match(text, i):
        line, err = _escaped_bad_utf8(text, i)
        raise DataError(f"{path}:{line}: {err.message}")
    if i >= n or text[i] != "[":
        raise DataError(f"{path}:{line}: a .json dataset must be one JSON array of examples (use .jsonl for one per line)")
    advance(skip_ws(i + 1))
    if not (i < n and text[i] == "]"):
        while True:
            start_line = line
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                yield _syntax_error(text, exc.pos, exc.msg, missing=exc.msg.startswith("Expecting"))
                return  # the array's structure is lost after a syntax error
            bad = _ESCAPED.search(text, i, end)  # undecodable bytes inside a string of this element
            advance(end)
            yield (_escaped_bad_utf8(text, bad.start(), start_line) if bad else (start_line, value))
            advance(skip_ws(i))
            if i < n and text[i] == ",":
                advance(skip_ws(i + 1))
            elif i < n and text[i] == "]":
                break
            else:
                yield _syntax_error(text, i, "expected ',' or ']' after an element", missing=True)
                return
    advance(skip_ws(i + 1))
    if i < n:  # a second array, or JSONL after the first: it would be silently lost
        yield _syntax_error(text, i, "extra data after the array's closing ']'", missing=False)


def _syntax_error(text: str, pos: int, msg: str, *, missing: bool) -> tuple[int, RowError]:
    """(line, error) for a JSON syntax error the parser found at text[pos]. When something is
    `missing` and the parser only found out on a later line, at the start of a plausible token (or
    at the end of the file), the problem is the end of the earlier line: it is named there."""
    if pos < len(text) and _ESCAPED.match(text, pos):
        return _escaped_bad_utf8(text, pos)
    if missing and (pos >= len(text) or text[pos] in '{}[]"'):
        end = pos
        while end > 0 and text[end - 1] in " \t\r\n":
            end -= 1
        if "\n" in text[end:pos]:
            pos = end
    line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
    return line, RowError("invalid_json", f"invalid JSON: {msg} (column {column})")


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _csv(path: Path):
    bad: list[tuple[int, bytes, UnicodeDecodeError]] = []  # lines of the current row that are not UTF-8

    def lines(f):  # the file's lines as csv.reader wants them, strictly decoded
        for raw in f:
            for piece in _LONE_CR.split(raw) if b"\r" in raw else (raw,):
                if not piece:
                    continue
                try:
                    yield piece.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad.append((reader.line_num + 1, piece, exc))  # line_num counts the lines handed out
                    yield piece.decode("utf-8", "replace")  # keeps the CSV structure readable

    with open(path, "rb") as f:
        reader = csv.reader(lines(f))
        header = next(reader, None)
        if bad:  # the header is no example: the file is refused
            raise DataError(f"{path}:{bad[0][0]}: {_bad_utf8(bad[0][1], bad[0][2]).message}")
        if header is None:
            return
        while True:
            start = reader.line_num + 1  # the file line this row starts on (line 1 is the header)
            cells = next(reader, None)
            if bad:
                line, raw, exc = bad[0]
                bad.clear()
                yield line, _bad_utf8(raw, exc, start if start != line else None)
                continue
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
