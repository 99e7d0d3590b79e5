"""One streaming pass over a dataset file: read → normalise → render → mask → length policy.

The data doctor and training share this pass, so what the doctor reports is exactly what
training would use.

Bounded: rows are read as a stream (each at most `readers.MAX_ROW_BYTES`) and tokenized in
batches of at most CHUNK examples and CHUNK_CHARS characters of conversation (one bigger example
goes alone), so memory follows the largest example, not the file. What the scan keeps does not
grow with the file: counts, examples per token length, the MAX_LISTED issues of the lowest lines of
each kind, and duplicate detection that spills to temporary files (`_Duplicates`). The encoded
examples themselves go to `sink` (the data cache writes them to disk), or to `kept` with keep=True
(small files: tests, evaluation).
"""

import hashlib
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..progress import Task
from .formats import Invalid, normalise, rows_with_format
from .render import OVERLONG_POLICIES, Encoded, PairEncoded, Renderer, apply_max_length
from .types import Issue

CHUNK = 1024  # examples per batched tokenizer call, at most
CHUNK_CHARS = 4 * 2**20  # characters of conversation (as JSON) per batched tokenizer call, at most
MAX_LISTED = 10_000  # errors (and warnings) listed, those of the lowest lines; the counts stay exact beyond it


@dataclass
class Example:
    line: int
    input_ids: list[int]
    loss_mask: list[int]

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)

    @property
    def size(self) -> int:
        """Tokens, for grouping by length (a Pair's size counts both its sides)."""
        return len(self.input_ids)


@dataclass
class Pair:
    """Preference pair `index` of its set: the prompt with the chosen answer, and with the rejected one."""

    index: int
    chosen: Example
    rejected: Example

    @property
    def size(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)

    @property
    def line(self) -> int:
        return self.chosen.line


class Pairs(Sequence):
    """The pairs of a preference file, over its examples stored two by two (chosen, rejected), as
    scans and the data cache keep them: len(), [i] -> Pair, subset(positions) and `lines` as the
    examples have them, so splitting, batching and the run's records treat a pair as one example."""

    def __init__(self, examples):
        if len(examples) % 2:
            raise DataError(f"a preference set holds chosen and rejected examples two by two, got {len(examples)}")
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples) // 2

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        i = range(len(self))[i]
        return Pair(i, self.examples[2 * i], self.examples[2 * i + 1])

    def subset(self, positions) -> "Pairs":
        at = [j for p in positions for j in (2 * int(p), 2 * int(p) + 1)]
        if hasattr(self.examples, "subset"):
            return Pairs(self.examples.subset(at))
        return Pairs([self.examples[j] for j in at])

    @property
    def lines(self):
        import numpy as np

        lines = self.examples.lines if hasattr(self.examples, "lines") else np.array([e.line for e in self.examples])
        return lines[::2]


@dataclass
class Scan:
    path: Path
    format: str
    examples: int = 0
    errors: list[Issue] = field(default_factory=list)  # the MAX_LISTED of the lowest lines, in file order
    warnings: list[Issue] = field(default_factory=list)  # likewise
    error_count: int = 0
    warning_count: int = 0
    bad: int = 0  # examples with an error (each has at most one; whole-file errors are not examples)
    duplicates: int = 0
    length_counts: Counter = field(default_factory=Counter)  # usable examples per token length, before truncation
    kept: list[Example] = field(default_factory=list)  # filled only when keep=True
    n_kept: int = 0
    trained_tokens: int = 0
    epoch_tokens: int = 0
    dropped: int = 0
    truncated: int = 0

    @property
    def ok(self) -> bool:
        return not self.error_count  # an empty file, or one whose examples were all dropped, has an error

    def error(self, issue: Issue) -> None:
        self.error_count += 1
        self.bad += issue.line > 0
        _listed(self.errors, issue)

    def warn(self, issue: Issue) -> None:
        self.warning_count += 1
        self.duplicates += issue.code == "duplicate"
        _listed(self.warnings, issue)

    def raise_if_errors(self) -> None:
        """Training refuses a file with errors: one line naming the first and how to see all."""
        if self.error_count:
            first = self.errors[0]
            n = self.error_count
            more = f" (and {n - 1} more)" if n > 1 else ""
            where = f"{self.path}:{first.line}" if first.line else str(self.path)  # line 0: the whole file
            raise DataError(f"{where}: {first.message} [{first.code}]{more}", hint=check_hint(self.path))


def check_hint(path) -> str:
    """What to do next about a data file that has a problem."""
    return f"run `tunery data check {path}` to see every problem"


Sink = Callable[[int, list[int], list[int]], None]  # (line, input_ids, loss_mask) of each kept example


def scan_file(path: str | Path, renderer: Renderer, *, max_length: int, overlong: str = "drop",
              fmt: str = "auto", keep: bool = False, ground=None, sink: Sink | None = None) -> Scan:
    """Read, check and encode every example of a file. `ground`, when given, rewrites each
    conversation before it is rendered (retrieval puts its context into the prompt):
    `ground(conv) -> (conv, (code, message) warning or None)`. `sink` receives every kept
    example, in file order."""
    path = Path(path)
    if overlong not in OVERLONG_POLICIES:
        raise DataError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got {overlong!r}")
    with Task(f"read {path.name}") as task:  # in bytes of the file, by its reader
        return _scan(path, renderer, task, max_length=max_length, overlong=overlong, fmt=fmt, keep=keep,
                     ground=ground, sink=sink)


def _scan(path: Path, renderer: Renderer, task: Task, *, max_length: int, overlong: str, fmt: str, keep: bool,
          ground, sink: Sink | None) -> Scan:
    fmt, rows = rows_with_format(path, fmt, task)
    scan = Scan(path=path, format=fmt)
    duplicates = _Duplicates()
    convs, chars = [], 0

    def encode():
        for conv, enc in zip(convs, renderer.encode_many(convs)):
            _account(scan, conv.line, enc, max_length, overlong, keep, sink)
        convs.clear()
        task.update(note=f"{scan.examples:,} examples")

    for line, row in rows:
        scan.examples += 1
        conv, issues = normalise(line, row, fmt)
        for issue in issues:
            scan.error(issue)
        if conv is None:
            continue
        canonical = json.dumps([conv.messages, conv.tools, conv.text, conv.rejected], sort_keys=True, default=str)
        duplicates.add(hashlib.blake2b(canonical.encode(), digest_size=16).digest(), line)
        if ground is not None:
            conv, warning = ground(conv)
            if warning:
                scan.warn(Issue(line, *warning))
        if convs and (len(convs) >= CHUNK or chars + len(canonical) > CHUNK_CHARS):
            encode()
            chars = 0
        convs.append(conv)
        chars += len(canonical)
    if convs:
        encode()
    if task.total is not None:
        task.update(task.total)
    for line, first in duplicates.found():
        scan.warn(Issue(line, "duplicate", f"exact duplicate of line {first}"))
    if scan.n_kept and fmt != "text":
        for code, message in renderer.template_warnings():
            scan.warn(Issue(0, code, message))
    if scan.examples == 0:
        scan.error(Issue(0, "empty_file", "the file holds no examples"))
    elif scan.n_kept == 0 and scan.dropped:  # "ok" with nothing to train on would be a lie
        scan.error(Issue(0, "no_usable_examples", _none_usable(scan, max_length)))
    # Format problems are found before template/length ones within a chunk: list in file order.
    for issues in (scan.errors, scan.warnings):
        issues.sort(key=lambda issue: issue.line)
        del issues[MAX_LISTED:]
    return scan


def _listed(issues: list[Issue], issue: Issue) -> None:
    """Keep the MAX_LISTED issues of the lowest lines (issues arrive almost in line order)."""
    issues.append(issue)
    if len(issues) >= 2 * MAX_LISTED:
        issues.sort(key=lambda i: i.line)  # stable: one line's issues stay in the order found
        del issues[MAX_LISTED:]


class _Duplicates:
    """Exact duplicates in memory that does not grow with the file.

    Each example's 16-byte digest and line are buffered; past SPILL_BYTES the buffer is split by
    digest into BUCKETS temporary files. After the pass each bucket (about 1/BUCKETS of all
    records) is sorted alone: every copy after the first is reported with the first one's line.
    """

    SPILL_BYTES = 4 * 2**20  # about 175,000 examples
    BUCKETS = 256

    def __init__(self):
        self.buf = bytearray()
        self.folder: tempfile.TemporaryDirectory | None = None

    def add(self, digest: bytes, line: int) -> None:
        self.buf += digest
        self.buf += line.to_bytes(8, "little", signed=True)
        if len(self.buf) >= self.SPILL_BYTES:
            self._spill()

    def _spill(self) -> None:
        import numpy as np

        records = np.frombuffer(self.buf, _RECORD)
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="tunery-duplicates-")
        bucket = (records["hi"] >> np.uint64(56)).astype(np.intp)  # the top 8 bits: BUCKETS = 256
        order = np.argsort(bucket, kind="stable")
        records, bucket = records[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(self.BUCKETS + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            with open(os.path.join(self.folder.name, str(b)), "ab") as f:
                f.write(records[bounds[b]: bounds[b + 1]].tobytes())
        self.buf = bytearray()

    def found(self) -> Iterator[tuple[int, int]]:
        """(line, line of its first copy) for every later copy."""
        import numpy as np

        if self.folder is None:
            yield from _copies(np.frombuffer(self.buf, _RECORD))
            return
        self._spill()
        with self.folder:
            for name in os.listdir(self.folder.name):
                yield from _copies(np.fromfile(os.path.join(self.folder.name, name), _RECORD))


_RECORD = [("hi", "<u8"), ("lo", "<u8"), ("line", "<i8")]  # a digest and its line


def _copies(records) -> Iterator[tuple[int, int]]:
    import numpy as np

    if len(records) < 2:
        return
    s = records[np.lexsort((records["line"], records["lo"], records["hi"]))]
    same = (s["hi"][1:] == s["hi"][:-1]) & (s["lo"][1:] == s["lo"][:-1])  # record i+1 repeats record i
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    first = starts[np.searchsorted(starts, np.arange(len(s)), side="right") - 1]  # each record's group start
    for i in np.flatnonzero(same) + 1:
        yield int(s["line"][i]), int(s["line"][first[i]])


def _none_usable(scan: Scan, max_length: int) -> str:
    """Why a file whose examples were all dropped (some may have errors) leaves nothing to train on."""
    fix = "raise max_length or set overlong to truncate"
    bad = scan.examples - scan.dropped
    if bad:
        return (f"no usable examples: {scan.dropped} {'is' if scan.dropped == 1 else 'are'} longer than max_length "
                f"{max_length}, the other {bad} {'has' if bad == 1 else 'have'} errors; fix them, {fix}")
    if scan.dropped == 1:
        return (f"no usable examples: the one example is longer than max_length {max_length} "
                f"({min(scan.length_counts)} tokens); {fix}")
    return (f"no usable examples: all {scan.dropped} examples are longer than max_length {max_length} (the shortest "
            f"has {min(scan.length_counts)} tokens); {fix}")


def _account(scan: Scan, line: int, enc: "Encoded | PairEncoded | Invalid", max_length: int, overlong: str,
             keep: bool, sink: Sink | None) -> None:
    if isinstance(enc, Invalid):
        scan.error(Issue(line, enc.code, str(enc)))
        return
    sides = (enc.chosen, enc.rejected) if isinstance(enc, PairEncoded) else (enc,)
    scan.length_counts[max(len(e.input_ids) for e in sides)] += 1
    fitted = apply_max_length(enc, max_length, overlong)
    if isinstance(fitted, Invalid):
        if overlong == "error" or fitted.code == "nothing_trainable":
            scan.error(Issue(line, fitted.code, str(fitted)))
        else:
            scan.dropped += 1
            scan.warn(Issue(line, "too_long", f"{fitted} (dropped)"))
        return
    if fitted is not None:
        scan.truncated += 1
        before = max(e.length_before_truncation for e in sides)
        scan.warn(Issue(line, "truncated", f"{before} tokens truncated to {max_length}"))
        enc = fitted
        sides = (enc.chosen, enc.rejected) if isinstance(enc, PairEncoded) else (enc,)
    scan.n_kept += 1
    for code, message in enc.warnings:
        scan.warn(Issue(line, code, message))
    for e in sides:  # a pair is two records, chosen then rejected, with the same line
        scan.trained_tokens += e.n_trained
        scan.epoch_tokens += len(e.input_ids)
        if keep:
            scan.kept.append(Example(line, e.input_ids, e.loss_mask))
        if sink is not None:
            sink(line, e.input_ids, e.loss_mask)


def split_examples(examples, val_fraction: float, seed: int, max_val: int = 0):
    """Seeded, deterministic train/validation split; at least one example on each side, at most
    `max_val` validation examples when given (the rest train). A lazy example set (data/cache.py)
    is split into lazy subsets; a list into lists."""
    import numpy as np

    if not 0 < val_fraction < 1:
        raise DataError(f"val_split must be between 0 and 1, got {val_fraction}")
    if len(examples) < 2:
        raise DataError(f"need at least 2 examples to split off a validation set, have {len(examples)}")
    order = np.arange(len(examples))  # 8 bytes an example; shuffled exactly as a list would be
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    if max_val:
        n_val = min(n_val, max_val)
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    if hasattr(examples, "subset"):
        return examples.subset(train), examples.subset(val)
    return [examples[i] for i in train], [examples[i] for i in val]


def sample_examples(examples, n: int, seed: int):
    """At most n of the examples, a seeded sample kept in file order (all of them when n is 0)."""
    import numpy as np

    if not n or len(examples) <= n:
        return examples
    order = np.arange(len(examples))
    random.Random(seed).shuffle(order)
    keep = np.sort(order[:n])
    return examples.subset(keep) if hasattr(examples, "subset") else [examples[i] for i in keep]
