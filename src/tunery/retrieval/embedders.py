"""Embedding models for the index: what the index needs of one, and the ones tunery knows.

An embedder has a `name` (recorded in the index: searching embeds the query with the same one,
and a rebuild with another is refused), `dimensions`, `embed(texts)` returning float32 rows of
unit length (so a dot product is the cosine), and `tokens(text)`, the character spans of the
text's tokens, which the chunker counts its budget with. The base class counts a word or a
punctuation mark as one token: an estimate for embedders without a tokenizer of their own.

`wordllama` (the default) is a 256-dimension static embedding (token vectors averaged) of about
16 MB that ships inside its wheel: it loads in a tenth of a second, embeds thousands of chunks a
second on a CPU, and never touches the network (the package's own folder is passed as its cache,
with downloads disabled). Loaded embedders are kept per process: one load per name.
"""

import functools
import logging
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError

_WORDS = re.compile(r"\w+|[^\w\s]")


class Embedder:
    name = "words"
    dimensions = 0
    detail = ""  # recorded in the index beside the name: model, version

    def tokens(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORDS.finditer(text)]

    def embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class WordLlamaEmbedder(Embedder):
    name = "wordllama"
    dimensions = 256

    def __init__(self):
        from importlib.metadata import version

        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        import wordllama
        from wordllama import WordLlama

        # wordllama.inference calls logging.basicConfig(level=INFO) when imported: undo it, so
        # loading an embedder does not turn on every library's INFO logging.
        root.handlers[:] = handlers
        root.setLevel(level)
        try:
            self.model = WordLlama.load(config="l2_supercat", dim=self.dimensions,
                                        cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        except FileNotFoundError as exc:
            raise ConfigError(f"embedder wordllama: its files are missing from the installed package ({exc}); "
                              "reinstall wordllama") from None
        self.detail = f"wordllama {version('wordllama')} l2_supercat {self.dimensions}"

    def tokens(self, text: str) -> list[tuple[int, int]]:
        return self.model.tokenizer.encode(text, add_special_tokens=False).offsets

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        return unit_rows(self.model.embed(texts, batch_size=256))


# name -> factory. Another engine registers itself here (tests add fakes the same way).
EMBEDDERS = {"wordllama": WordLlamaEmbedder}


def check_name(name: str) -> None:
    if name not in EMBEDDERS:
        raise ConfigError(f"unknown embedder {name!r} (known: {', '.join(sorted(EMBEDDERS))})", field="embedder")


@functools.cache
def get_embedder(name: str) -> Embedder:
    check_name(name)
    return EMBEDDERS[name]()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
