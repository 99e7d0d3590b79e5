"""Finding the files an index is built from and reading their text.

A *document* is one file. Its key in the index is its resolved absolute path, its version the
sha256 of its bytes (files.file_digest): the pair the index records to tell what changed. A file
gives one or more `Text`s to chunk: a .jsonl file one per row, any other kind one.

Supported: .md and .markdown, .txt, .html and .htm (the stdlib html.parser; script, style and
other non-content elements dropped; h1-h6 become markdown headings so the chunker keeps them with
their text), .pdf (pypdf; pages joined by blank lines), .jsonl (one JSON object per line with a
non-empty string `text`; `id` and `source` optional, every other field kept as metadata). Offsets
and lines of chunks refer to this extracted text.

Errors are one-line DataErrors naming the file (and the line, for a .jsonl row): missing,
unreadable, not UTF-8, no text, an unsupported kind named explicitly. Inside a folder, files of
unsupported kinds are skipped and counted, and hidden entries (.git, an index's temp folders)
are not looked at.
"""

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from ..errors import DataError

MARKDOWN = (".md", ".markdown")
SUFFIXES = (*MARKDOWN, ".txt", ".html", ".htm", ".pdf", ".jsonl")


@dataclass
class Text:
    text: str
    source: str  # what a hit cites: the file, or a .jsonl row's `source` (else FILE#ID)
    markdown: bool  # headings mean sections
    meta: dict = field(default_factory=dict)


def find_files(sources: list, exclude: Path | None = None) -> tuple[list[Path], int]:
    """Every supported file under `sources` (folders recursed, sorted; `exclude`, the index's own
    folder, left out), once each, resolved; and how many files of other kinds the folders held."""
    found: dict[Path, None] = {}
    skipped = 0
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            for child in sorted(_walk(path, exclude)):
                if child.suffix.lower() in SUFFIXES:
                    found[child.resolve()] = None
                else:
                    skipped += 1
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} "
                                f"(supported: {', '.join(SUFFIXES)})")
            found[path.resolve()] = None
        elif path.exists():
            raise DataError(f"{path}: not a regular file or folder")
        else:
            raise DataError(f"{path}: no such file or folder")
    return list(found), skipped


def _walk(folder: Path, exclude: Path | None):
    for child in folder.iterdir():
        if child.name.startswith(".") or (exclude is not None and child.resolve() == exclude):
            continue
        if child.is_dir():
            yield from _walk(child, exclude)
        elif child.is_file():
            yield child


def read_texts(path: Path) -> list[Text]:
    """The texts of one file, each non-empty."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path)
    if suffix == ".pdf":
        text, markdown = _pdf(path), False
    else:
        text = _read(path)
        markdown = suffix in MARKDOWN
        if suffix in (".html", ".htm"):
            text, markdown = html_text(text), True
    if not text.strip():
        raise DataError(f"{path}: no text in this file")
    return [Text(text, str(path), markdown)]


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _jsonl(path: Path) -> list[Text]:
    texts = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object with a \"text\" field")
        text = row.pop("text", None)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{n}: \"text\" must be a non-empty string")
        row_id = str(row.pop("id", n))
        source = row.pop("source", None)
        texts.append(Text(text, str(source) if source else f"{path}#{row_id}", True, {"id": row_id, **row}))
    if not texts:
        raise DataError(f"{path}: no rows in this file")
    return texts


def _pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DataError(f"{path}: reading .pdf needs pypdf", hint="run `pip install pypdf`") from None
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise DataError(f"{path}: the PDF is encrypted")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read this PDF ({exc})") from None


# -- HTML ------------------------------------------------------------------------------------------

_DROP = {"script", "style", "noscript", "template", "svg", "iframe", "object"}
_BLOCKS = {"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "li", "ul", "ol",
           "table", "tr", "blockquote", "pre", "figure", "figcaption", "dl", "dt", "dd", "form", "hr", "br",
           "body", "html", "title"}


class _TextParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.dropping: list[str] = []  # open elements whose content is dropped
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag == "title" and not self.dropping:
            self._flush()
            self.current.append("# ")
            return
        if tag in _DROP:
            self.dropping.append(tag)
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._flush()
            self.current.append("#" * int(tag[1]) + " ")
        elif tag in _BLOCKS:
            self._flush()
            self.pre += tag == "pre"

    def handle_endtag(self, tag):
        if self.dropping and tag == self.dropping[-1]:
            self.dropping.pop()
        elif tag in _BLOCKS or tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._flush()
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data):
        if not self.dropping:
            self.current.append(data)

    def _flush(self):
        text = "".join(self.current)
        self.current = []
        text = text.strip("\n") if self.pre else " ".join(text.split())
        if text.strip() and text.strip() not in ("#", "##", "###", "####", "#####", "######"):
            self.blocks.append(text)


def html_text(html: str) -> str:
    """The readable text of an HTML page: one paragraph per block element, headings as markdown."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    parser._flush()
    return "\n\n".join(parser.blocks)
