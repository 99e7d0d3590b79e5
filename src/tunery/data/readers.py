"""Read rows from JSONL, JSON (array), CSV and Parquet files, each with its line or row number.

Readers stream: they yield (line, value) where value is the parsed row, or a RowError for a
row that could not be parsed, so one bad line never hides the rest of the file.

Bounded: no example is read past MAX_ROW_BYTES. A JSONL line over it is a `too_large` error,
skipped in pieces and never held whole; so is a JSON element or a Parquet row over it. A CSV line
or row over it is a one-line DataError (the CSV's structure is lost there). JSONL, CSV and Parquet
are read as streams; a .json file is one array, read whole, so it is refused above
MAX_JSON_BYTES with the command that converts it to JSONL.

Progress: given a `task` (progress.Task), a reader reports how far into the file it is, in bytes
(rows for Parquet), every REPORT_EVERY rows.

Text is UTF-8, strictly (a leading byte-order mark, as Excel writes, is skipped): bytes that are
not are an `invalid_utf8` error naming the line (and
column) that holds them, never silently replaced. Text is decoded with surrogateescape, which
keeps each undecodable byte as a lone surrogate (valid UTF-8 never decodes to one), so the
structure around a bad byte stays readable and the byte is found exactly. JSONL lines end at
"\\n" only (JSON Lines); CSV lines end where `open(newline="")` ends them (\\n, \\r\\n or a lone \\r).

A JSON syntax error names the line and column of the problem: a JSONL line is parsed without its
line end, so a truncated row is reported at its own end, not at column 1 of the next line; in a
.json array, a missing token that the parser only notices on a later line (a truncated element,
a missing comma, a trailing comma, a missing ']') is reported right after the last token before
it. A .json file holds exactly one array: a missing ']' or anything after it is an error.
"""

import csv
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_ROW_BYTES = 8 * 2**20  # one example (a JSONL line, JSON element, CSV row, Parquet row), its line end not counted
MAX_JSON_BYTES = 64 * 2**20  # a .json file, which is read whole
_SKIP = 2**16  # characters read at a time while skipping a line over the cap
REPORT_EVERY = 256  # rows between two progress reports


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


def read_rows(path: str | Path, task=None) -> Iterator[tuple[int, object]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = {"jsonl": _jsonl, "json": _json_array, "csv": _csv, "parquet": _parquet}[file_kind(path)]
    yield from reader(path, task or _NoTask())


class _NoTask:
    def update(self, *args, **kwargs) -> None:
        pass


def _file_progress(f, path: Path, task):
    """A function reporting, every REPORT_EVERY calls, how many bytes of the file were read."""
    task.update(0, total=path.stat().st_size, unit="B")
    calls = 0

    def report() -> None:
        nonlocal calls
        calls += 1
        if calls % REPORT_EVERY == 0:
            task.update(f.buffer.tell())

    return report


# -- sizes -------------------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 2**20 else f"{round(n / 2**20, 1):g} MiB"


def _over(what: str, size: int, cap: int, limit: str) -> str:
    """'the line is 50 MiB, over the 8 MiB one example may take' (in bytes where MiB would blur them)."""
    shown, cap_shown = (_size(size), _size(cap)) if _size(size) != _size(cap) else (f"{size:,} bytes", f"{cap:,} bytes")
    return f"{what} is {shown}, over the {cap_shown} {limit}"


def _too_large(what: str, size: int) -> str:
    return f"{_over(what, size, MAX_ROW_BYTES, 'one example may take')}; shorten or split it"


def _nbytes(text: str) -> int:
    """UTF-8 size of decoded text, undecodable bytes (surrogateescape) counting one each."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


# -- strict UTF-8 ------------------------------------------------------------------------------

_ESCAPED = re.compile("[\udc80-\udcff]")  # an undecodable byte, as surrogateescape keeps it


def _bad_utf8(text: str, at: int, line: int, start_line: int | None = None) -> tuple[int, RowError]:
    """(line, error) for the undecodable byte at text[at], which is on `line` of the file;
    `start_line` is the line its example starts on."""
    column = at - text.rfind("\n", 0, at)
    where = f" (in the example starting on line {start_line})" if start_line not in (None, line) else ""
    return line, RowError("invalid_utf8", f"invalid UTF-8: byte 0x{ord(text[at]) - 0xDC00:02x} at column {column}"
                                          f"{where}; save the file as UTF-8")


def _first_bad(text: str) -> int | None:
    if text.isascii():
        return None
    bad = _ESCAPED.search(text)
    return bad.start() if bad else None


def _lines(f, ends: tuple[str, ...]) -> Iterator[tuple[str | None, int]]:
    """(line, 0) for each line of a text file, or (None, size) for a line whose size without its
    end is over MAX_ROW_BYTES: that one is read on in pieces, never held whole."""
    cap = MAX_ROW_BYTES
    while line := f.readline(cap + 2):  # characters; a line end takes at most 2
        ended = line.endswith(ends)
        whole = ended or len(line) < cap + 2  # else readline stopped at the cap, inside the line
        body = line.rstrip("\r\n") if ended else line
        if whole and (len(body) <= cap // 4 or _nbytes(body) <= cap):
            yield line, 0
            continue
        size = _nbytes(body)
        while not ended and (piece := f.readline(_SKIP)):
            ended = piece.endswith(ends)
            size += _nbytes(piece.rstrip("\r\n") if ended else piece)
        yield None, size


# -- the readers -------------------------------------------------------------------------------

def _jsonl(path: Path, task):
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n") as f:
        report = _file_progress(f, path, task)
        for n, (text, size) in enumerate(_lines(f, ("\n",)), 1):
            report()
            if text is None:
                yield n, RowError("too_large", _too_large("the line", size))
                continue
            bad = _first_bad(text)
            if bad is not None:
                yield _bad_utf8(text, bad, n)
                continue
            if not text.strip():
                continue
            try:
                yield n, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield n, RowError("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
            except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting past Python's parser
                yield n, RowError("invalid_json", f"invalid JSON: {_unreadable(exc)}")


def _json_array(path: Path, task):
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DataError(f"{path}: {_over('the file', size, MAX_JSON_BYTES, 'a .json dataset may take')} (it is read "
                        f"whole); convert it to .jsonl, which is read line by line: jq -c '.[]' {path.name} > "
                        f"{path.stem}.jsonl")
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
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
        line, err = _bad_utf8(text, i, line)
        raise DataError(f"{path}:{line}: {err.message}")
    if i >= n or text[i] != "[":
        raise DataError(f"{path}:{line}: a .json dataset must be one JSON array of examples (use .jsonl for one per line)")
    advance(skip_ws(i + 1))
    task.update(0, total=n, unit="B")  # characters, near enough to bytes
    if not (i < n and text[i] == "]"):
        for count in itertools.count(1):
            if count % REPORT_EVERY == 0:
                task.update(i)
            start, start_line = i, line
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                yield _syntax_error(text, exc.pos, exc.msg, missing=exc.msg.startswith("Expecting"))
                return  # the array's structure is lost after a syntax error
            except (ValueError, RecursionError) as exc:
                raise DataError(f"{path}:{start_line}: invalid JSON in the example starting here: {_unreadable(exc)}") from None
            advance(end)
            bad = _ESCAPED.search(text, start, end)  # undecodable bytes inside a string of this element
            if end - start > MAX_ROW_BYTES // 4 and (size := _nbytes(text[start:end])) > MAX_ROW_BYTES:
                yield start_line, RowError("too_large", _too_large("the example", size))
            elif bad:
                yield _bad_utf8(text, bad.start(), start_line + text.count("\n", start, bad.start()), start_line)
            else:
                yield start_line, value
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
        return _bad_utf8(text, pos, text.count("\n", 0, pos) + 1)
    if missing and (pos >= len(text) or text[pos] in '{}[]"'):
        end = pos
        while end > 0 and text[end - 1] in " \t\r\n":
            end -= 1
        if "\n" in text[end:pos]:
            pos = end
    line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
    return line, RowError("invalid_json", f"invalid JSON: {msg} (column {column})")


def _csv(path: Path, task):
    if csv.field_size_limit() < MAX_ROW_BYTES:  # the csv module's default is 128 KiB a cell
        csv.field_size_limit(MAX_ROW_BYTES)
    bad: list[tuple[int, RowError]] = []  # undecodable bytes in the current row
    row = {"start": 1, "bytes": 0}

    def lines(f):  # the file's lines as csv.reader wants them; csv's line_num counts those handed out
        for text, size in _lines(f, ("\n", "\r")):
            n = reader.line_num + 1
            if text is None:
                raise DataError(f"{path}:{n}: {_too_large('the line', size)}")
            is_ascii = text.isascii()
            row["bytes"] += len(text) if is_ascii else _nbytes(text)  # a quoted cell's line ends count, the row's not
            if row["bytes"] > MAX_ROW_BYTES and row["bytes"] - (len(text) - len(text.rstrip("\r\n"))) > MAX_ROW_BYTES:
                raise DataError(f"{path}:{n}: the row starting on line {row['start']} is over the "
                                f"{_size(MAX_ROW_BYTES)} one example may take (a quote left open?); shorten or split it")
            if not is_ascii and not bad and (at := _ESCAPED.search(text)):
                bad.append(_bad_utf8(text, at.start(), n, row["start"]))
            yield text

    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        report = _file_progress(f, path, task)
        reader = csv.reader(lines(f))
        header = next(reader, None)
        if bad:  # the header is no example: the file is refused
            raise DataError(f"{path}:{bad[0][0]}: {bad[0][1].message}")
        if header is None:
            return
        while True:
            report()
            row["start"] = reader.line_num + 1  # the file line this row starts on (line 1 is the header)
            row["bytes"] = 0
            cells = next(reader, None)
            if bad:
                yield bad.pop()
                continue
            if cells is None:
                return
            if not cells:  # a blank line: no row, but it counts as a line
                continue
            values = dict(zip(header, cells))
            for k in header[len(cells):]:
                values[k] = None  # a short row, as csv.DictReader fills it
            yield row["start"], {k: _maybe_json(v) for k, v in values.items()}


def _maybe_json(cell):
    """CSV cells holding lists or objects (messages, conversations, tools) are JSON text."""
    if isinstance(cell, str) and cell[:1] in "[{":
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _parquet(path: Path, task):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    task.update(0, total=pf.metadata.num_rows, unit="rows")
    for batch in pf.iter_batches(batch_size=1024):
        task.update(row)
        for record in batch.to_pylist():
            row += 1
            size = _value_bytes(record)
            if size > MAX_ROW_BYTES:
                yield row, RowError("too_large", _too_large("the row", size))
            else:
                yield row, {k: _maybe_json(v) for k, v in record.items()}


def _value_bytes(value) -> int:
    """About the size of a Parquet value as text: its strings' UTF-8 bytes, 8 for anything else."""
    if isinstance(value, str):
        return _nbytes(value)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_nbytes(k) + _value_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_value_bytes(v) for v in value)
    return 8


def _unreadable(exc: Exception) -> str:
    """Why valid-looking JSON could not be read: nesting too deep, or an integer too long."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"a number too long to read ({str(exc).split('(')[0].strip()})" if "digits" in str(exc) else str(exc)[:200]
