"""Render conversations with the chat template and derive token-level loss masks.

How masks are found without `{% generation %}` markers: for each trained assistant turn i we
render the conversation up to turn i with the generation prompt (the prompt the model will see
at inference) and up to turn i inclusive. The characters between the two are the assistant's
turn. This is only sound if every prefix renders as a prefix of the whole conversation, which we
check for every example; a template that breaks it gets a clear error, never a guessed mask.
The end-of-turn token that closes a trained turn is trained too, so the model learns to stop.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from .formats import Invalid
from .template import ChatTemplate
from .types import Conversation

MASK_MODES = ("assistant", "last", "all")
OVERLONG_POLICIES = ("drop", "truncate", "error")


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target
    length_before_truncation: int

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)

    @property
    def truncated(self) -> bool:
        return self.length_before_truncation > len(self.input_ids)


class Renderer:
    def __init__(self, tokenizer, template: ChatTemplate | None, mask: str = "assistant"):
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}")
        self.tokenizer = tokenizer
        self.template = template
        self.mask = mask
        self.eos_id = tokenizer.eos_token_id
        self.stop_ids = stop_token_ids(tokenizer)

    # -- text and character spans -------------------------------------------------------------
    def text_and_spans(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        if conv.text is not None:
            return conv.text, [(0, len(conv.text))]
        if self.template is None:
            raise Invalid("no_template", "the model has no chat template; pass --template FILE")
        msgs, tools = conv.messages, conv.tools
        try:
            full = self.template.render(msgs, tools)
            if self.mask == "all":
                return full, [(0, len(full))]
            spans = []
            for i in self._trained_turns(conv):
                before = self.template.render(msgs[:i], tools, add_generation_prompt=True)
                upto = full if i == len(msgs) - 1 else self.template.render(msgs[: i + 1], tools)
                if not (upto.startswith(before) and full.startswith(upto)):
                    raise Invalid(
                        "mask_underivable",
                        f"the chat template does not render turn {i} as a prefix of the whole conversation, "
                        "so loss masks cannot be derived; pass --template FILE or --mask all",
                    )
                end = len(upto.rstrip())  # text after the end-of-turn token (newlines) is not trained
                if end > len(before):
                    spans.append((len(before), end))
        except Invalid:
            raise
        except Exception as exc:  # templates raise_exception() on conversations they reject
            raise Invalid("template_error", f"chat template failed: {exc}") from None
        if not spans:
            raise Invalid("nothing_trainable", "no tokens left to train on after masking")
        return full, spans

    def _trained_turns(self, conv: Conversation) -> list[int]:
        turns = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant" and conv.weights[i] != 0]
        if self.mask == "last":
            last = max(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
            turns = [i for i in turns if i == last]
        return turns

    # -- tokens ---------------------------------------------------------------------------------
    def encode_many(self, convs: Sequence[Conversation]) -> list["Encoded | Invalid"]:
        """Encode a chunk of conversations with one batched tokenizer call."""
        results: list[Encoded | Invalid | None] = [None] * len(convs)
        texts, spans, where = [], [], []
        for k, conv in enumerate(convs):
            try:
                text, sp = self.text_and_spans(conv)
            except Invalid as exc:
                results[k] = exc
                continue
            texts.append(text)
            spans.append(sp)
            where.append(k)
        if texts:
            # The Rust tokenizer directly: transformers' wrapper costs as much again in Python.
            encodings = self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
            for j, k in enumerate(where):
                plain = convs[k].text is not None
                results[k] = self._mask(encodings[j].ids, encodings[j].offsets, spans[j], plain, texts[j])
        return results

    def _mask(self, ids: list[int], offsets, spans, plain: bool, text: str = "") -> Encoded:
        out_ids, out_mask = [], []
        if plain and self.tokenizer.bos_token_id is not None:
            out_ids.append(self.tokenizer.bos_token_id)
            out_mask.append(0)
        n, t = len(ids), 0
        for start, end in spans:
            while t < n and offsets[t][0] < start:
                out_ids.append(ids[t]); out_mask.append(0); t += 1
            stopped = False
            while t < n and offsets[t][0] < end:
                out_ids.append(ids[t]); out_mask.append(1)
                # Whitespace after an end token (ChatML's newline, with --mask all) does not
                # reopen the turn, so no second end token is appended after it.
                if ids[t] in self.stop_ids:
                    stopped = True
                elif not stopped or text[offsets[t][0]:offsets[t][1]].strip():
                    stopped = False
                t += 1
            if not stopped and self.eos_id is not None:
                # The template closes this turn without an end token (or plain text): add one,
                # trained, so generation learns where to stop.
                out_ids.append(self.eos_id); out_mask.append(1)
        out_ids.extend(ids[t:]); out_mask.extend([0] * (n - t))
        return Encoded(out_ids, out_mask, len(out_ids))


def apply_max_length(enc: Encoded, max_length: int, policy: str) -> "Encoded | Invalid | None":
    """None keeps the example as is; otherwise the truncated example or why it is rejected."""
    if len(enc.input_ids) <= max_length:
        return None
    if policy == "truncate":
        cut = Encoded(enc.input_ids[:max_length], enc.loss_mask[:max_length], enc.length_before_truncation)
        if cut.n_trained == 0:
            return Invalid("nothing_trainable", f"{len(enc.input_ids)} tokens; nothing trainable within the first {max_length}")
        return cut
    return Invalid("too_long", f"{len(enc.input_ids)} tokens is longer than max_length {max_length}")


def stop_token_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if isinstance(tid, int):
            ids.add(tid)
    return ids
