"""Batched generation through the model's chat template, the same template training used."""

from dataclasses import dataclass

from .data.render import stop_token_ids
from .data.template import load_template
from .errors import TuneryError


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length


class Generator:
    """A loaded model ready to answer chats. Prompts are batched with left padding."""

    def __init__(self, model: str, *, template: str | None = None, device: str | None = None, dtype=None):
        from .models import load_model

        self.model, self.tokenizer = load_model(model, dtype=dtype, device=device)
        self.template = load_template(self.tokenizer, template)
        if self.template is None:
            raise TuneryError(f"model {model!r} has no chat template; pass --template FILE")
        self.stop_ids = sorted(stop_token_ids(self.tokenizer))

    def prompt_ids(self, messages: list[dict], tools=None) -> list[int]:
        text = self.template.render(messages, tools, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat(self, conversations: list[list[dict]], *, max_new_tokens: int = 256, batch_size: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[Generation]:
        import torch

        prompts = [self.prompt_ids(msgs) for msgs in conversations]
        # Longest first, so each batch holds similar lengths and little padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        if seed is not None:
            torch.manual_seed(seed)
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                p = prompts[i]
                ids[r, width - len(p):] = torch.tensor(p)
                attn[r, width - len(p):] = 1
            sampling = temperature > 0
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens,
                    do_sample=sampling, temperature=temperature if sampling else None,
                    top_p=top_p if sampling else None, top_k=None,
                    eos_token_id=self.stop_ids, pad_token_id=pad,
                )
            for r, i in enumerate(idx):
                new = out[r, width:].tolist()
                stop = next((k for k, t in enumerate(new) if t in self.stop_ids), None)
                kept = new if stop is None else new[:stop]
                results[i] = Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=len(kept) + (stop is not None),
                    finish_reason="stop" if stop is not None else "length",
                )
        return results  # type: ignore[return-value]


def generate(model: str, prompt: str, *, system: str | None = None, max_new_tokens: int = 256, **kw) -> str:
    """One answer to one prompt (the Python API behind `tunery generate`)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Generator(model).chat([messages], max_new_tokens=max_new_tokens, **kw)[0].text
