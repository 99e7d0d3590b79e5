"""Cutting a document's text into chunks by its structure, within a token budget, with overlap.

Structure first: a markdown heading starts a section (consecutive headings with nothing between
them form one heading), blank lines separate paragraphs (not inside ``` or ~~~ fences), and a
chunk ends at the last paragraph end that fits the budget; only a paragraph too long for a chunk
of its own is cut inside, at a sentence end if there is one in the second half of the window,
else at a space. Plain text (.txt, .pdf) has paragraphs but no headings.

Invariants, for every chunk of `chunk_text(text, ...)`:
- `tokens(chunk.text) <= chunk_tokens`, counted on the exact text that is embedded and searched;
- `chunk.text` is `text[chunk.start:chunk.end]` preceded by the headings its section is nested in
  (`# Cats` above `## Kittens`, one a line) and, when the span does not begin with it, by the
  section's own heading and a blank line: a heading is kept with every chunk of its section, and
  the first chunk of a section begins at the heading itself;
- a chunk after the first of its section begins (`start`) up to `overlap` tokens (of the whole
  text's tokenisation) before the end of the previous one, at a word start, and after the
  previous one's start; overlap never crosses a heading;
- `line` is the 1-based line of `start`; chunks come in text order and together cover every
  non-blank character of `text`.

`tokens` is the embedder's tokenizer as a function from a text to its tokens' character spans
(see embedders.py: wordllama's own, or a word-and-punctuation estimate). The whole text is
tokenised once to estimate any span's count; each chunk's final text is counted exactly.
"""

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable

Tokens = Callable[[str], list[tuple[int, int]]]

_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_FENCE = re.compile(r" {0,3}(```|~~~)")
_SENTENCE_END = re.compile(r"[.!?;:](?=\s)|\n")
_SLACK = 4  # tokens by which the estimate of a span (from the whole text's tokens) may miss its exact count


@dataclass
class Chunk:
    text: str  # what is embedded and searched
    start: int  # character offsets of the span in the document's text
    end: int
    line: int


@dataclass
class _Section:
    heading: tuple[int, int] | None
    blocks: list[tuple[int, int]]  # paragraph spans, in order
    above: str = ""  # the headings of the sections this one is nested in, one a line


def chunk_text(text: str, tokens: Tokens, chunk_tokens: int, overlap: int, markdown: bool = True) -> list[Chunk]:
    out: list[Chunk] = []
    starts = [a for a, _ in tokens(text)]  # where each of the whole text's tokens begins
    for section in _sections(text, markdown):
        out += _pack(text, section, _Counter(text, tokens, starts, chunk_tokens), overlap)
    line, counted = 1, 0  # starts only grow, so lines are counted once through the text
    for chunk in out:
        line += text.count("\n", counted, chunk.start)
        counted = chunk.start
        chunk.line = line
    return out


def _sections(text: str, markdown: bool) -> list[_Section]:
    sections = [_Section(None, [])]
    trail: list[tuple[int, int, int]] = []  # the open headings above this line: (level, start, end)
    fence = None  # the open fence's marker
    block_start = None
    pos = 0
    for line in text.splitlines(keepends=True):
        start, end = pos, pos + len(line.rstrip("\r\n"))
        pos += len(line)
        stripped = line.strip()
        if fence is None and markdown and _HEADING.match(line):
            if block_start is not None:
                sections[-1].blocks.append((block_start, _rstrip(text, block_start, start)))
                block_start = None
            level = len(stripped) - len(stripped.lstrip("#"))
            while trail and trail[-1][0] >= level:
                trail.pop()
            last = sections[-1]
            if last.heading is not None and not last.blocks:
                last.heading = (last.heading[0], end)  # a heading right under a heading: one heading
            else:
                sections.append(_Section((start, end), [], "\n".join(text[s:e] for _, s, e in trail)))
            trail.append((level, start, end))
            continue
        if markdown and (m := _FENCE.match(line)):
            fence = m.group(1) if fence is None else (None if stripped.startswith(fence) else fence)
        if not stripped and fence is None:
            if block_start is not None:
                sections[-1].blocks.append((block_start, _rstrip(text, block_start, start)))
                block_start = None
        elif block_start is None:
            block_start = start + (len(line) - len(line.lstrip()) if stripped else 0)
    if block_start is not None:
        sections[-1].blocks.append((block_start, _rstrip(text, block_start, len(text))))
    return [s for s in sections if s.heading is not None or s.blocks]


def _rstrip(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _pack(text: str, section: _Section, count: "_Counter", overlap: int) -> list[Chunk]:
    heading = text[section.heading[0]:section.heading[1]] if section.heading else ""
    above = f"{section.above}\n" if section.above else ""
    prefix = f"{above}{heading}\n\n" if heading else ""
    if heading and count.exact(prefix) > count.budget // 2:  # headings too long to repeat: plain text
        section = _Section(None, [section.heading, *section.blocks])
        heading = above = prefix = ""
    if not section.blocks:  # a heading with nothing under it (at the end of a document)
        return _pack(text, _Section(None, [section.heading]), count, overlap)
    ends = [e for _, e in section.blocks]
    chunks: list[Chunk] = []
    pos = section.heading[0] if heading else section.blocks[0][0]
    while pos < ends[-1]:
        if not chunks:
            start, pre = pos, above  # the first chunk begins at the heading (or the first paragraph)
        else:
            start, pre = _overlap_start(text, chunks[-1].start, pos, overlap, count.starts), prefix
        end = _fit(text, pre, start, pos, ends, count)
        if end <= pos and start < pos:  # the overlap left no room for new text: drop it
            start = pos
            end = _fit(text, pre, start, pos, ends, count)
        end = max(end, pos + 1)  # progress, always (a heading takes at most half the budget)
        chunks.append(Chunk(pre + text[start:end], start, end, 0))
        pos = _skip_space(text, end, ends[-1])
    return chunks


class _Counter:
    """Token counts: estimated for any span from the whole text's tokens (no tokenising), exact
    for a chunk's final text. Tokenising is most of a build's chunking time, so each candidate
    chunk is estimated and only the chosen one is counted exactly (a span tokenised alone can
    differ from the same span inside the text by a token or two at its edges)."""

    def __init__(self, text: str, tokens: Tokens, starts: list[int], budget: int):
        self.text, self.tokens, self.starts, self.budget = text, tokens, starts, budget
        self._prefix: dict[str, int] = {}

    def span(self, a: int, b: int) -> int:
        return bisect_left(self.starts, b) - bisect_left(self.starts, a)

    def exact(self, text: str) -> int:
        return len(self.tokens(text))

    def prefix(self, pre: str) -> int:
        if pre not in self._prefix:
            self._prefix[pre] = self.exact(pre)
        return self._prefix[pre]

    def fits(self, pre: str, start: int, end: int) -> bool:
        return self.exact(pre + self.text[start:end]) <= self.budget


def _fit(text: str, pre: str, start: int, pos: int, ends: list[int], count: _Counter) -> int:
    """The furthest end after `pos` such that `pre + text[start:end]` fits the budget: a paragraph
    end if one fits, else a cut inside the next paragraph."""
    budget, first = count.budget, bisect_right(ends, pos)
    base = count.prefix(pre) + count.span(start, pos)
    best, close = first - 1, False
    for j in range(first, len(ends)):
        estimate = base + count.span(pos, ends[j])
        if estimate > budget:
            close = estimate <= budget + _SLACK  # the next paragraph may fit after all
            break
        best = j
    if best < first:
        best, close = first, False  # let the exact count decide
    while best >= first:
        if count.fits(pre, start, ends[best]):
            while close and best + 1 < len(ends) and count.fits(pre, start, ends[best + 1]):
                best += 1
            return ends[best]
        best, close = best - 1, False
    # Cut inside the paragraph, where the budget's last token ends by the estimate, then exactly.
    i = bisect_left(count.starts, start) + budget - count.prefix(pre)
    limit = min(ends[first], count.starts[i] if i < len(count.starts) else len(text))
    if limit <= pos:  # the heading and the overlap fill the budget: no room for new text
        return pos
    cut = _cut_point(text, pos, limit)
    while cut > pos and not count.fits(pre, start, cut):
        cut = _cut_point(text, pos, cut - 1)
    if cut <= pos:  # one word longer than the budget: cut it inside
        cut = limit
        while cut > pos and not count.fits(pre, start, cut):
            cut -= 1
    return cut  # `pos` when nothing fits after the heading and the overlap


def _cut_point(text: str, pos: int, limit: int) -> int:
    """Where to end a chunk cut inside a paragraph at or before `limit`: after the last sentence
    end in the second half of [pos, limit), else before the last space; `pos` if neither."""
    window = text[pos:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= len(window) // 2:
        return _rstrip(text, pos, pos + ends[-1])
    space = max(window.rfind(" "), window.rfind("\t"), window.rfind("\n"))
    return _rstrip(text, pos, pos + space) if space > 0 else pos


def _overlap_start(text: str, prev_start: int, pos: int, overlap: int, starts: list[int]) -> int:
    """Up to `overlap` tokens back from `pos` (not before the previous chunk's start), at a word start."""
    if overlap <= 0:
        return pos
    start = starts[min(max(bisect_left(starts, pos) - overlap, bisect_left(starts, prev_start)), len(starts) - 1)]
    while start < pos and (start <= prev_start or not text[start - 1].isspace()):
        start += 1  # not mid-word, and never from the previous chunk's start (it would contain all of it)
    return _skip_space(text, start, pos)


def _skip_space(text: str, pos: int, end: int) -> int:
    while pos < end and text[pos].isspace():
        pos += 1
    return pos
