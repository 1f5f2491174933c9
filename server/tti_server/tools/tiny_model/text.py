"""The tiny models' text side: CLIP and T5 tokenizers written in memory, and their encoders.

Real checkpoints ship a CLIP BPE vocabulary and a T5 SentencePiece model; these
are built here instead, so nothing is downloaded and sentencepiece is not needed.
They tokenize any prompt the way the real ones do where it matters to a
pipeline: fixed special tokens, padding and truncation to the model's length.
"""

from __future__ import annotations

from typing import Any

# CLIP pads every prompt to 77 tokens; a tokenizer built without this limit makes the
# pipeline fail with "OverflowError: int too big to convert".
CLIP_MAX_TOKENS = 77
# The real T5 tokenizers of SD3 and Flux say 512; their pipelines ask for 256 or 512.
T5_MAX_TOKENS = 512
# Above the tokenizer's ~380 pieces; T5's own vocabulary is also larger than its tokenizer's.
T5_VOCAB_SIZE = 512

#: A CLIP text encoder, shaped like diffusers' own test components (the tokenizer uses 514 ids).
TINY_CLIP: dict[str, Any] = {
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "projection_dim": 32,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
#: A T5 v1.1 encoder (gated GELU, relative positions) of the tiny models' width.
TINY_T5: dict[str, Any] = {
    "vocab_size": T5_VOCAB_SIZE,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 96,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
}


def byte_level_clip_tokenizer() -> Any:
    """A CLIP tokenizer whose vocabulary is every byte, alone or ending a word.

    Any prompt tokenizes (one token per byte), which is all random weights need;
    the vocabulary is written here, so no network is needed.
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_TOKENS)


def clip_special_ids(tokenizer: Any) -> dict[str, Any]:
    """The CLIP config fields that must agree with `tokenizer` (its pooled output is at EOS)."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": CLIP_MAX_TOKENS,
    }


def character_t5_tokenizer() -> Any:
    """A T5 tokenizer (a Unigram model, as T5's is) whose pieces are single characters.

    Like T5's: `<pad>` 0, `</s>` 1, `<unk>` 2, `▁` marks a word's start, every
    sequence ends with `</s>`, and characters outside its alphabet become `<unk>`.
    The alphabet is printable ASCII and Latin-1, each alone and starting a word.
    """
    from transformers import T5Tokenizer

    alphabet = [chr(code) for code in [*range(ord("!"), ord("~") + 1), *range(0xA1, 0x100)]]
    pieces = [(piece, -1.0) for char in alphabet for piece in (char, "▁" + char)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *pieces]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_TOKENS)


def tiny_t5_encoder(tokenizer: Any) -> Any:
    """A random `T5EncoderModel` of `TINY_T5` with `tokenizer`'s special token ids."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        **TINY_T5, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return T5EncoderModel(config)


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses to stand for the bytes (GPT-2's map)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(shifted))]
    return [chr(code) for code in codes]
