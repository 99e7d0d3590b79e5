"""The one conversation type every dataset format is normalised into."""

from dataclasses import dataclass, field


@dataclass
class Conversation:
    """One training example.

    `messages` are plain dicts (role, content, optional tool_calls/name/tool_call_id), exactly
    what chat templates expect. `weights[i]` is the per-message training weight from the file
    (None when absent, so the mask mode decides). Plain-text examples have `text` instead.
    """

    messages: list[dict] = field(default_factory=list)
    weights: list[float | None] = field(default_factory=list)
    tools: list[dict] | None = None
    text: str | None = None
    line: int = 0  # line (JSONL/JSON) or row (CSV/Parquet) in the source file, 1-based


@dataclass
class Issue:
    """A problem found in a file: an error excludes the example, a warning does not."""

    line: int
    code: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "code": self.code, "message": self.message}
