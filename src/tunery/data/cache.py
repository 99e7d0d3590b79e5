"""Encoded examples on disk: a data file is tokenised once, and every later run with the same
inputs reads its examples lazily from flat files instead of encoding them again.

A cache is a folder TUNERY_HOME/data-cache/<key>/:
  tokens.bin     every kept example's input_ids back to back (uint16, or uint32 for vocabularies over 65,536)
  mask.bin       their loss masks (uint8, 0 or 1), aligned with tokens.bin
  offsets.bin    int64, n + 1 of them: example i is tokens[offsets[i]:offsets[i + 1]]
  lines.bin      int64, n: the line (row) of the source file each example came from
  manifest.json  written last: what the key was made of, what a run records (rows, format, whole-file
                 warnings) and each file's size and sha256

The key is a sha256 over everything that changes the encoded examples: the data file's content, the
tokenizer (its whole serialisation and special ids), the chat template (source, special tokens,
origin), the mask mode, max_length, the overlong policy, the format, the source of the modules that
encode (this package) and the tokenizers and jinja2 versions. Change any of them and the key misses.

Invariants:
- a cache is published by renaming a complete temporary folder into place, so a crash mid-build
  leaves only a `.tmp-*` folder that is never read; of builders racing on one key, the first rename
  wins and the others discard their copy and use it;
- a cache is used only when every file's size and sha256 match its manifest; one that does not is
  moved aside and rebuilt, with a warning, never read;
- building holds one chunk of examples (FLUSH_TOKENS) at a time; reading builds an Example only
  when it is indexed, from its own bytes (`_Files`), so memory does not grow with the file.

Why flat files read with numpy rather than Arrow (`datasets`): the layout is what Arrow's list<int>
column is (values plus offsets), without a dependency beyond numpy, without the `datasets` import
(seconds), with O(1) random access to example i (two offsets, two slices), and files whose expected
sizes follow from two counts, which makes a truncated cache easy to detect.
"""

import errno
import hashlib
import json
import mmap
import os
import shutil
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import file_digest, temp_dir, write_json_atomic
from ..home import tunery_home
from .dataset import Example, scan_file
from .render import Renderer

VERSION = 1
FILES = ("tokens.bin", "mask.bin", "offsets.bin", "lines.bin")
FLUSH_TOKENS = 1 << 20  # tokens buffered while building before they are written out


class DamagedCache(DataError):
    """A cache folder whose files do not match its manifest."""


@dataclass
class EncodedData:
    """A data file's kept examples (lazy) and what a run records about the file."""

    examples: "CachedExamples"
    rows: int  # examples read from the file, kept or not
    format: str
    notes: list[str]  # whole-file warnings, "code: message"
    hit: bool  # read from an existing cache, nothing encoded
    warning: str | None = None  # why a damaged cache was rebuilt


def cache_root() -> Path:
    return tunery_home() / "data-cache"


def encode_cached(path: str | Path, renderer: Renderer, *, max_length: int, overlong: str = "drop",
                  fmt: str = "auto", ground=None, cache: bool = True) -> EncodedData:
    """The file's examples from its cache, building the cache first when there is none. Errors in
    the file raise DataError, and leave no cache. With `ground` (retrieval context that depends on
    an index) or cache=False, the examples are encoded into a private folder nobody else reads,
    deleted as soon as its files are open: training stays lazy either way."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    if ground is not None or not cache:
        return _build(path, renderer, root, None, {}, max_length=max_length, overlong=overlong, fmt=fmt, ground=ground)
    parts = key_parts(path, renderer, max_length=max_length, overlong=overlong, fmt=fmt)
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    dest = root / key
    warning = None
    if dest.exists():
        try:
            return _open(dest, hit=True)
        except DamagedCache as exc:
            warning = f"data cache {dest} is damaged ({exc}); rebuilding it"
            _discard(dest)
    data = _build(path, renderer, root, dest, parts, max_length=max_length, overlong=overlong, fmt=fmt, ground=None)
    data.warning = warning
    return data


def key_parts(path: str | Path, renderer: Renderer, *, max_length: int, overlong: str, fmt: str) -> dict:
    """Everything that changes the encoded examples (hashed into the cache's key)."""
    import jinja2
    import tokenizers

    from ..registry.db import connect
    from ..registry.hashing import file_sha256

    with connect() as conn:  # the registry remembers file hashes by (size, mtime, inode): read once
        data = file_sha256(conn, Path(path))
    template = renderer.template
    return {
        "version": VERSION, "data": data, "tokenizer": tokenizer_fingerprint(renderer.tokenizer),
        "template": None if template is None else hashlib.sha256(json.dumps(
            [template.source, getattr(template, "_special", None), template.origin], sort_keys=True).encode()).hexdigest(),
        "mask": renderer.mask, "max_length": max_length, "overlong": overlong, "format": fmt, "code": _code_hash(),
        "libraries": {"tokenizers": tokenizers.__version__, "jinja2": jinja2.__version__},
    }


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what encoding reads from a (fast) tokenizer: its whole serialisation and special ids."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    specials = {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
    h.update(json.dumps([type(tokenizer).__name__, specials], sort_keys=True).encode())
    return h.hexdigest()


def _code_hash() -> str:
    """The source of this package: a change to reading, rendering or masking invalidates every cache."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# -- building -----------------------------------------------------------------------------------

def _build(path, renderer: Renderer, root: Path, dest: Path | None, parts: dict, *, max_length: int, overlong: str,
           fmt: str, ground) -> EncodedData:
    """Scan the file into a temporary folder; publish it as `dest` (None: private, deleted once open)."""
    tmp = temp_dir(root, f".tmp-{dest.name if dest else 'private'}-")
    try:
        writer = _Writer(tmp, len(renderer.tokenizer))
        scan = scan_file(path, renderer, max_length=max_length, overlong=overlong, fmt=fmt, ground=ground,
                         sink=writer.add)
        files = writer.close()
        scan.raise_if_errors()  # a file with errors is refused: nothing is published
        write_json_atomic(tmp / "manifest.json", {
            "version": VERSION, "key": parts, "rows": scan.examples, "format": scan.format,
            "notes": [f"{w.code}: {w.message}" for w in scan.warnings if w.line == 0],
            "examples": writer.n, "tokens": writer.total, "dtype": writer.dtype, "files": files})
        if dest is None:
            data = _open(tmp, hit=False, verify=False)
            shutil.rmtree(tmp)  # the open files live on until the examples are dropped
            return data
        if not _publish(tmp, dest):  # another builder won: use theirs (the same examples, by the key)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _open(dest, hit=False)


def _sweep(root: Path, age: float = 86400) -> None:
    """Delete what crashed builders (`.tmp-*`) and interrupted discards (`.bad-*`) left a day ago or more."""
    import time

    for entry in os.scandir(root):
        if entry.name.startswith((".tmp-", ".bad-")):
            try:
                if entry.stat().st_mtime < time.time() - age:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except FileNotFoundError:
                pass


def _publish(tmp: Path, dest: Path) -> bool:
    """Rename a complete folder into place unless one is there already; True if ours is the one."""
    try:
        os.rename(tmp, dest)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise


def _discard(folder: Path) -> None:
    """Move a damaged cache out of its name at once (one rename), then delete it."""
    aside = folder.with_name(f".bad-{folder.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


class _Writer:
    """Appends examples to the four files a chunk at a time, hashing what it writes."""

    def __init__(self, folder: Path, vocab_size: int):
        self.dtype = "<u2" if vocab_size <= 1 << 16 else "<u4"
        self.out = {name: open(folder / name, "wb") for name in FILES}
        self.sha = {name: hashlib.sha256() for name in FILES}
        self.size = dict.fromkeys(FILES, 0)
        self.ids, self.mask, self.lens, self.lines = array("I"), array("B"), array("q"), array("q")
        self.n = self.total = 0
        self._write("offsets.bin", array("q", [0]))

    def add(self, line: int, input_ids: list[int], loss_mask: list[int]) -> None:
        self.ids.extend(input_ids)
        self.mask.extend(loss_mask)
        self.lens.append(len(input_ids))
        self.lines.append(line)
        if len(self.ids) >= FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        ids = np.frombuffer(self.ids, np.uint32)
        if self.dtype == "<u2" and len(ids) and ids.max() >= 1 << 16:
            raise ValueError(f"token id {ids.max()} does not fit the cache's uint16")
        self._write("tokens.bin", ids.astype(self.dtype))
        self._write("mask.bin", self.mask)
        self._write("offsets.bin", self.total + np.cumsum(np.frombuffer(self.lens, np.int64), dtype="<i8"))
        self._write("lines.bin", np.frombuffer(self.lines, np.int64).astype("<i8"))
        self.total += len(self.ids)
        self.n += len(self.lens)
        self.ids, self.mask, self.lens, self.lines = array("I"), array("B"), array("q"), array("q")

    def _write(self, name: str, data) -> None:
        data = memoryview(data).cast("B")
        self.out[name].write(data)
        self.sha[name].update(data)
        self.size[name] += len(data)

    def close(self) -> dict:
        self._flush()
        for f in self.out.values():
            f.close()
        return {name: {"size": self.size[name], "sha256": self.sha[name].hexdigest()} for name in FILES}


# -- reading ------------------------------------------------------------------------------------

def _open(folder: Path, *, hit: bool, verify: bool = True) -> EncodedData:
    manifest = _verified(folder) if verify else json.loads((folder / "manifest.json").read_text())
    files = _Files(folder, manifest, published=verify)
    return EncodedData(CachedExamples(files), rows=manifest["rows"], format=manifest["format"],
                       notes=manifest["notes"], hit=hit)


def _verified(folder: Path) -> dict:
    """The manifest, once every file matches it: sizes that follow from the counts, then sha256."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        n, total, itemsize = manifest["examples"], manifest["tokens"], int(manifest["dtype"][-1])
        expected = {"tokens.bin": total * itemsize, "mask.bin": total, "offsets.bin": (n + 1) * 8, "lines.bin": n * 8}
        if manifest["version"] != VERSION:
            raise DamagedCache(f"format {manifest['version']}, expected {VERSION}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedCache(f"manifest.json: {exc}") from None
    for name in FILES:
        try:
            size = (folder / name).stat().st_size
        except OSError:
            raise DamagedCache(f"{name} is missing") from None
        if size != expected[name] or size != manifest["files"][name]["size"]:
            raise DamagedCache(f"{name} has {size} bytes, expected {expected[name]}")
    for name in FILES:
        if file_digest(folder / name) != manifest["files"][name]["sha256"]:
            raise DamagedCache(f"{name} does not match its sha256")
    return manifest


class _Files:
    """The four files of one cache, open. The descriptors outlive the folder's name (a private cache
    is deleted at once; a damaged one may be discarded by another process).

    One example is read with four `pread`s (offsets, line, tokens, mask: a few hundred bytes). Not
    through a mapping: on this kernel (6.x, large folios in the page cache) a fault on a shared file
    mapping maps whole folios, so reading examples in shuffled order through np.memmap made about
    0.4 MB resident per example, and the process's RSS grew to the cache's size whatever how often it
    was re-mapped (measured; bench/README.md). pread copies just the bytes asked for; the page
    cache still holds the file once for every process (DDP ranks) reading it. Whole columns
    (`lengths`, `lines`) are read through a memory map, once, when asked.
    """

    def __init__(self, folder: Path, manifest: dict, published: bool):
        import numpy as np

        self.folder = folder if published else None  # a published cache can be reopened by name
        self.n, self.total = manifest["examples"], manifest["tokens"]
        self.dtype = np.dtype(manifest["dtype"])
        self.fds = {}
        for name in FILES:
            self.fds[name] = os.open(folder / name, os.O_RDONLY)

    def _pread(self, name: str, size: int, at: int) -> bytes:
        data = os.pread(self.fds[name], size, at)
        if len(data) != size:
            raise DamagedCache(f"data cache {self.folder or '(private)'}: {name} is shorter than its manifest says; "
                               "it changed after it was checked: run again to rebuild it")
        return data

    def example(self, j: int) -> Example:
        import numpy as np

        a, b = struct.unpack("<qq", self._pread("offsets.bin", 16, 8 * j))
        (line,) = struct.unpack("<q", self._pread("lines.bin", 8, 8 * j))
        size = self.dtype.itemsize
        ids = np.frombuffer(self._pread("tokens.bin", (b - a) * size, a * size), self.dtype).tolist()
        return Example(line, ids, list(self._pread("mask.bin", b - a, a)))

    def column(self, name: str, count: int):
        """A whole int64 file, memory-mapped read-only (offsets, lines)."""
        import numpy as np

        if count == 0:  # an empty file cannot be mapped
            return np.zeros(0, "<i8")
        return np.frombuffer(mmap.mmap(self.fds[name], 0, access=mmap.ACCESS_READ), "<i8", count=count)

    def __del__(self):
        for fd in getattr(self, "fds", {}).values():
            os.close(fd)


class CachedExamples(Sequence):
    """Examples read lazily from a cache: len(), [i] -> Example (plain lists, built when indexed),
    [a:b] and subset(positions) -> CachedExamples. Nothing is read until an example is indexed;
    `lengths` and `lines` come from the offsets and lines files alone."""

    def __init__(self, files: _Files, positions=None):
        self._files = files
        self._positions = positions  # None: every example of the cache, in file order

    def __len__(self) -> int:
        return self._files.n if self._positions is None else len(self._positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return CachedExamples(self._files, self._all()[i])
        i = int(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"example {i} of {n}")
        i %= n
        return self._files.example(i if self._positions is None else int(self._positions[i]))

    def subset(self, positions) -> "CachedExamples":
        """The examples at these positions (of this set), in that order."""
        import numpy as np

        return CachedExamples(self._files, self._all()[np.asarray(positions, dtype=np.int64)])

    def _all(self):
        import numpy as np

        return np.arange(self._files.n) if self._positions is None else self._positions

    @property
    def lengths(self):
        """Tokens per example (numpy), without reading any token."""
        import numpy as np

        offsets = self._files.column("offsets.bin", self._files.n + 1)
        if self._positions is None:
            return np.diff(offsets)
        return offsets[self._positions + 1] - offsets[self._positions]

    @property
    def lines(self):
        """The source line of each example (numpy)."""
        import numpy as np

        lines = self._files.column("lines.bin", self._files.n)
        return np.array(lines) if self._positions is None else lines[self._positions]

    def __reduce__(self):
        """Pickled (a worker process) by name, never by content; a private set cannot be."""
        if self._files.folder is None:
            raise TypeError("examples encoded without the data cache cannot be pickled; train with data_cache on")
        return _reopen, (str(self._files.folder), self._positions)


def _reopen(folder: str, positions) -> CachedExamples:
    data = _open(Path(folder), hit=True, verify=False)
    return data.examples if positions is None else data.examples.subset(positions)
