"""A tiny random Llama-style model and a locally trained tokenizer, built in about a second.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a small corpus, with
a ChatML chat template (the same shape as the default model's).
"""

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    '{"name": "Ada", "age": 36, "city": "London"}',
    "system user assistant tool you are a helpful assistant",
    "0123456789 +-*/=()[]{}<>:;,.!?'\"",
    "Translate to French: good morning -> bonjour",
] * 20


def build_tokenizer(folder: Path, template: str = CHATML, corpus: list[str] = (), vocab: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS + list(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = template
    fast.save_pretrained(folder)
    return fast


def family_tokenizer(template: str, *, specials: list[str], eos: str, bos: str | None = None,
                     corpus: list[str] = ()):
    """A byte-level BPE tokenizer with a model family's special tokens and chat template (not saved).

    `corpus` adds text to learn merges from: a template's markers written as plain text there
    become multi-character tokens that can straddle a marker and the next header, as they do in
    real tokenizers that lack the family's special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    names = list(dict.fromkeys([eos] + ([bos] if bos else []) + specials))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=names,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS + list(corpus) * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token=eos)
    fast.chat_template = template
    return fast


def build_model(folder: str | Path, *, layers: int = 2, hidden: int = 32, seed: int = 0, template: str = CHATML,
                context: int = 512, corpus: list[str] = (), vocab: int = 400) -> Path:
    """Write a tiny LlamaForCausalLM + tokenizer into `folder` and return it (`corpus`: more text for
    the tokenizer to learn merges from)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder, template, corpus, vocab)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        # No pad id in the model config: Llama would zero that embedding row at init, and since the
        # tokenizer pads with EOS, a tied output layer could then never predict EOS.
        pad_token_id=None, tie_word_embeddings=True,
        initializer_range=0.3,  # large enough that frozen random embeddings can express confident outputs
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
