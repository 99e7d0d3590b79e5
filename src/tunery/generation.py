"""Batched generation through the model's chat template, the same template training used.

A batch's rows may each follow their own grammar (`constraints`: one constrain.Constraint, or
None, per row): at every step each constrained row's state takes the token the row last produced
and fills its row of a bitmask, and the tokens outside it get -inf before sampling.
"""

import functools
from dataclasses import dataclass, field

from .data.render import stop_token_ids
from .data.template import load_template
from .errors import TuneryError


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    token_ids: list[int] = field(default_factory=list)  # the answer's tokens, the end-of-turn token excluded


def generate_batch(model, tokenizer, prompts: list[list[int]], stop_ids: list[int], *, max_new_tokens: int,
                   temperature: float = 0.0, top_p: float = 1.0, stop: list[str] | None = None,
                   streamer=None, stopping_criteria=None, logits_processor=None,
                   constraints: list | None = None) -> list[Generation]:
    """One left-padded batch through `model.generate` (KV cache), cut at end-of-turn or a stop string.
    `stopping_criteria` (transformers StoppingCriteria) may end rows early; such a row reports
    finish_reason "length" with the tokens it has. `logits_processor`: more transformers
    LogitsProcessors. `constraints`: each row's grammar (constrain.Constraint) or None; a row's
    constraint must have consumed the row's answer so far (a resumed answer's earlier tokens)."""
    import torch

    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        attention[r, width - len(p):] = 1
    sampling = temperature > 0
    extra = {"stop_strings": stop, "tokenizer": tokenizer} if stop else {}
    if constraints is not None and any(c is not None for c in constraints):
        logits_processor = [row_masks(constraints)] + list(logits_processor or [])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
            do_sample=sampling, temperature=temperature if sampling else None, top_p=top_p if sampling else None,
            top_k=None, eos_token_id=stop_ids, pad_token_id=pad, use_cache=True, streamer=streamer,
            stopping_criteria=stopping_criteria, logits_processor=logits_processor, **extra)
    results = []
    for r, p in enumerate(prompts):
        new = out[r, width:].tolist()
        end = next((k for k, t in enumerate(new) if t in stop_ids), None)
        kept = new if end is None else new[:end]
        text = tokenizer.decode(kept, skip_special_tokens=True)
        finish = "stop" if end is not None else "length"
        for s in stop or []:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        results.append(Generation(text, len(p), len(kept) + (end is not None), finish, kept))
    return results


def row_masks(constraints: list):
    """A transformers LogitsProcessor: row r's logits outside `constraints[r]`'s bitmask become -inf
    (rows whose constraint is None, or whose answer has ended, are left alone). Made for one
    generate call: the first call's width is where the answers begin."""
    import torch
    from transformers import LogitsProcessor

    class RowMasks(LogitsProcessor):
        def __init__(self):
            self.start = None
            self.seen = [0] * len(constraints)  # answer tokens each row's constraint was given in this call

        def __call__(self, input_ids, scores):
            if self.start is None:
                self.start = input_ids.shape[1]
            words = max([(scores.shape[-1] + 31) // 32] + [c.words for c in constraints if c is not None])
            bitmask = torch.zeros((len(constraints), words), dtype=torch.int32)
            rows = []
            for r, c in enumerate(constraints):
                if c is None:
                    continue
                c.extend(input_ids[r, self.start + self.seen[r]:].tolist())
                self.seen[r] = input_ids.shape[1] - self.start
                if c.fill(bitmask[r]):
                    rows.append(r)
            if rows:
                bits = (bitmask[rows].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # (R, words, 32)
                allowed = bits.view(len(rows), -1)[:, : scores.shape[-1]].bool().to(scores.device)
                index = torch.tensor(rows, device=scores.device)
                scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
            return scores

    return RowMasks()


class Generator:
    """A loaded model ready to answer chats. Prompts are batched with left padding."""

    def __init__(self, model: str, *, template: str | None = None, device: str | None = None, dtype=None):
        from .models import load_model

        self.model, self.tokenizer = load_model(model, dtype=dtype, device=device)
        self.template = load_template(self.tokenizer, template)
        if self.template is None:
            raise TuneryError(f"model {model!r} has no chat template; pass --template FILE")
        self.stop_ids = sorted(stop_token_ids(self.tokenizer, self.template))

    def prompt_ids(self, messages: list[dict], tools=None) -> list[int]:
        text = self.template.render(messages, tools, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat(self, conversations: list[list[dict]], *, max_new_tokens: int = 256, batch_size: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None, constraints: list | None = None) -> list[Generation]:
        """Answers to conversations, batched. `constraints`: one constrain.Constraint (or None) per
        conversation, each used for one answer."""
        import torch

        prompts = [self.prompt_ids(msgs) for msgs in conversations]
        # Longest first, so each batch holds similar lengths and little padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        if seed is not None:
            torch.manual_seed(seed)
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            batch = generate_batch(self.model, self.tokenizer, [prompts[i] for i in idx], self.stop_ids,
                                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop,
                                   constraints=[constraints[i] for i in idx] if constraints else None)
            for i, g in zip(idx, batch):
                results[i] = g
        return results  # type: ignore[return-value]


def generate(model: str, prompt: str, *, system: str | None = None, max_new_tokens: int = 256, **kw) -> str:
    """One answer to one prompt (the Python API behind `tunery generate`)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Generator(model).chat([messages], max_new_tokens=max_new_tokens, **kw)[0].text


class IncrementalText:
    """Text of a growing token sequence, decoding only the new tokens (with the previous piece as
    context, since a token's text can depend on its neighbours). Decoding everything at each
    token grows with the square of the answer's length."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""
        self.skip_special_tokens = skip_special_tokens
        self.context = self.read = 0  # ids[context:read]: the piece decoded last, as context

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=self.skip_special_tokens)
        before, after = decode(self.ids[self.context: self.read]), decode(self.ids[self.context:])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # not inside a multi-byte character
            self.text += after[len(before):]
            self.context, self.read = self.read, len(self.ids)
        return self.text
