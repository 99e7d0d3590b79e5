"""One streaming pass over a dataset file: read → normalise → render → mask → length policy.

The data doctor and training share this pass, so what the doctor reports is exactly what
training would use.

Bounded: rows are read as a stream (each at most `readers.MAX_ROW_BYTES`) and tokenized in
batches of at most CHUNK examples and CHUNK_CHARS characters of conversation (one bigger example
goes alone), so memory follows the largest example, not the file; what the scan keeps per example
is counts (and the tokens themselves only with keep=True, for training).
"""

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .formats import Invalid, normalise, rows_with_format
from .render import OVERLONG_POLICIES, Encoded, Renderer, apply_max_length
from .types import Issue

CHUNK = 1024  # examples per batched tokenizer call, at most
CHUNK_CHARS = 4 * 2**20  # characters of conversation (as JSON) per batched tokenizer call, at most


@dataclass
class Example:
    line: int
    input_ids: list[int]
    loss_mask: list[int]

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)


@dataclass
class Scan:
    path: Path
    format: str
    examples: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens per usable example, before truncation
    kept: list[Example] = field(default_factory=list)  # filled only when keep=True
    n_kept: int = 0
    trained_tokens: int = 0
    epoch_tokens: int = 0
    dropped: int = 0
    truncated: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors  # an empty file, or one whose examples were all dropped, has an error

    def raise_if_errors(self) -> None:
        """Training refuses a file with errors: one line naming the first and how to see all."""
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more; run `tunery data check {self.path}`)" if len(self.errors) > 1 else ""
            where = f"{self.path}:{first.line}" if first.line else str(self.path)  # line 0: the whole file
            raise DataError(f"{where}: {first.message} [{first.code}]{more}")


def scan_file(path: str | Path, renderer: Renderer, *, max_length: int, overlong: str = "drop",
              fmt: str = "auto", keep: bool = False, ground=None) -> Scan:
    """Read, check and encode every example of a file. `ground`, when given, rewrites each
    conversation before it is rendered (retrieval puts its context into the prompt):
    `ground(conv) -> (conv, (code, message) warning or None)`."""
    path = Path(path)
    if overlong not in OVERLONG_POLICIES:
        raise DataError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got {overlong!r}")
    fmt, rows = rows_with_format(path, fmt)
    scan = Scan(path=path, format=fmt)
    seen: dict[bytes, int] = {}
    convs, chars = [], 0

    def encode():
        for conv, enc in zip(convs, renderer.encode_many(convs)):
            _account(scan, conv.line, enc, max_length, overlong, keep)
        convs.clear()

    for line, row in rows:
        scan.examples += 1
        conv, issues = normalise(line, row, fmt)
        scan.errors.extend(issues)
        if conv is None:
            continue
        canonical = json.dumps([conv.messages, conv.tools, conv.text], sort_keys=True, default=str)
        key = hashlib.blake2b(canonical.encode(), digest_size=16).digest()
        if key in seen:
            scan.warnings.append(Issue(line, "duplicate", f"exact duplicate of line {seen[key]}"))
        else:
            seen[key] = line
        if ground is not None:
            conv, warning = ground(conv)
            if warning:
                scan.warnings.append(Issue(line, *warning))
        if convs and (len(convs) >= CHUNK or chars + len(canonical) > CHUNK_CHARS):
            encode()
            chars = 0
        convs.append(conv)
        chars += len(canonical)
    if convs:
        encode()
    if scan.n_kept and fmt != "text":
        scan.warnings += [Issue(0, code, message) for code, message in renderer.template_warnings()]
    if scan.examples == 0:
        scan.errors.append(Issue(0, "empty_file", "the file holds no examples"))
    elif scan.n_kept == 0 and scan.dropped:  # "ok" with nothing to train on would be a lie
        scan.errors.append(Issue(0, "no_usable_examples", _none_usable(scan, max_length)))
    # Format problems are found before template/length ones within a chunk: list in file order.
    scan.errors.sort(key=lambda issue: issue.line)
    scan.warnings.sort(key=lambda issue: issue.line)
    return scan


def _none_usable(scan: Scan, max_length: int) -> str:
    """Why a file whose examples were all dropped (some may have errors) leaves nothing to train on."""
    fix = "raise max_length or set overlong to truncate"
    bad = scan.examples - scan.dropped
    if bad:
        return (f"no usable examples: {scan.dropped} {'is' if scan.dropped == 1 else 'are'} longer than max_length "
                f"{max_length}, the other {bad} {'has' if bad == 1 else 'have'} errors; fix them, {fix}")
    if scan.dropped == 1:
        return f"no usable examples: the one example is longer than max_length {max_length} ({scan.lengths[0]} tokens); {fix}"
    return (f"no usable examples: all {scan.dropped} examples are longer than max_length {max_length} (the shortest "
            f"has {min(scan.lengths)} tokens); {fix}")


def _account(scan: Scan, line: int, enc: "Encoded | Invalid", max_length: int, overlong: str, keep: bool) -> None:
    if isinstance(enc, Invalid):
        scan.errors.append(Issue(line, enc.code, str(enc)))
        return
    scan.lengths.append(len(enc.input_ids))
    fitted = apply_max_length(enc, max_length, overlong)
    if isinstance(fitted, Invalid):
        if overlong == "error" or fitted.code == "nothing_trainable":
            scan.errors.append(Issue(line, fitted.code, str(fitted)))
        else:
            scan.dropped += 1
            scan.warnings.append(Issue(line, "too_long", f"{fitted} (dropped)"))
        return
    if fitted is not None:
        scan.truncated += 1
        scan.warnings.append(Issue(line, "truncated", f"{fitted.length_before_truncation} tokens truncated to {max_length}"))
        enc = fitted
    scan.n_kept += 1
    scan.warnings += [Issue(line, code, message) for code, message in enc.warnings]
    scan.trained_tokens += enc.n_trained
    scan.epoch_tokens += len(enc.input_ids)
    if keep:
        scan.kept.append(Example(line, enc.input_ids, enc.loss_mask))


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded, deterministic train/validation split; at least one example on each side."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_split must be between 0 and 1, got {val_fraction}")
    if len(examples) < 2:
        raise DataError(f"need at least 2 examples to split off a validation set, have {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]
