"""The one conversation type every dataset format is normalised into."""

from dataclasses import dataclass, field


@dataclass
class Conversation:
    """One training example.

    `messages` are plain dicts (role, content, optional tool_calls/name/tool_call_id), exactly
    what chat templates expect. `weights[i]` is the per-message training weight from the file
    (None when absent, so the mask mode decides). Plain-text examples have `text` instead. A
    preference pair holds its prompt and chosen answer (weight 1) in `messages`, and in `rejected`
    the messages that replace the chosen ones.
    """

    messages: list[dict] = field(default_factory=list)
    weights: list[float | None] = field(default_factory=list)
    tools: list[dict] | None = None
    text: str | None = None
    rejected: list[dict] | None = None  # a preference pair's rejected answer (messages after the prompt)
    line: int = 0  # line (JSONL/JSON) or row (CSV/Parquet) in the source file, 1-based

    def sides(self) -> tuple["Conversation", "Conversation"]:
        """A preference pair's two conversations: the prompt with the chosen answer, and with the rejected one."""
        n = max((k + 1 for k, w in enumerate(self.weights) if w != 1.0), default=0)  # the prompt: before the answer
        chosen = Conversation(self.messages, self.weights, self.tools, line=self.line)
        rejected = Conversation(self.messages[:n] + self.rejected, self.weights[:n] + [1.0] * len(self.rejected),
                                self.tools, line=self.line)
        return chosen, rejected


@dataclass
class Issue:
    """A problem found in a file: an error excludes the example, a warning does not."""

    line: int
    code: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "code": self.code, "message": self.message}
