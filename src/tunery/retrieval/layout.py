"""The one prompt layout for retrieved context, shared by training, evaluation and serving, so a
model is always asked the way it was taught.

The chunks go into the last user message, before the question, numbered, each with its source:

    Context:
    [1] (docs/prices.md)
    The Basic plan costs 12 EUR a month.

    [2] (docs/faq.md)
    ...

    Question: How much is the Basic plan?

It lives in the user message, not a system message, because several chat templates have no
system role. LAYOUT names this layout in config.yaml and the registry; a changed layout is a
new name, never an edit of this one.
"""

LAYOUT = "context-v1"


def query_of(messages: list[dict]) -> str:
    """What retrieval searches for: the last user message's text."""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def with_context(messages: list[dict], hits) -> list[dict]:
    """`messages` with `hits` (objects or dicts with text and source) laid out before the last
    user message's text. Returns a new list; the input is not changed."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            m["content"] = render(m["content"], hits)
            break
    return out


def render(question: str, hits) -> str:
    parts = ["Context:"]
    for i, h in enumerate(hits, 1):
        text = h["text"] if isinstance(h, dict) else h.text
        source = h["source"] if isinstance(h, dict) else h.source
        parts.append(f"[{i}] ({source})\n{text.strip()}\n")
    if len(parts) == 1:
        parts.append("(nothing found)\n")
    return "\n".join(parts) + f"\nQuestion: {question}"
