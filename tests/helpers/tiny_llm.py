"""A tiny random chat LLM built in-process, for unit tests that must not load SmolLM2.

The tokenizer is a byte-level BPE without merges over printable ASCII and
newline (one token per character), with SmolLM2's special tokens and a ChatML
chat template; the model is a 2-layer Llama with random weights. Special
tokens get zero output weights so greedy replies run to `max_new_tokens`
unless a test arranges otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flywheel.runtime.llm import ChatModel

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ChatML tokenizer over printable ASCII and newline, one token per character."""
    byte_chars = _bytes_to_unicode()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for byte in [10, *range(32, 127)]:
        vocab[byte_chars[byte]] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<unk>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama with seeded random weights, in eval mode."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # Wider than the default 0.02 so greedy replies vary instead of repeating one character.
        initializer_range=0.5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)  # leave other tests' randomness alone
    with torch.no_grad():
        model.lm_head.weight[: len(SPECIAL_TOKENS)] = 0.0
    return model.eval()


def build_tiny_chat_model(seed: int = 0) -> ChatModel:
    """A `ChatModel` over the tiny tokenizer and a fresh tiny model."""
    tokenizer = build_tiny_tokenizer()
    return ChatModel(tokenizer, build_tiny_model(len(tokenizer), seed), name="tiny")


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as a local HF folder (a `ModelParams.source`)."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(len(tokenizer), seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
