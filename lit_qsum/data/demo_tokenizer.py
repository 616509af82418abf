"""A small Korean+English BPE tokenizer trained on the bundled synthetic data, for offline demos and tests.

It follows T5's conventions (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, ``</s>`` appended to every
sequence), so a tiny T5 built from a config trains against it with no hub download. 256 byte tokens
(``<0x00>`` … ``<0xFF>``) give byte fallback: text with characters never seen in training, such as
rare Hangul syllables or emoji, still encodes and decodes back exactly.
"""

from __future__ import annotations

import csv
import json

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lit_qsum.data.synthetic import bundled_path

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
SPEAKER_TOKENS = ["#Person1#", "#Person2#", "#Person3#"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


def _training_texts() -> list[str]:
    with open(bundled_path("train"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [row[col] for row in rows for col in ("dialogue", "summary")]


def _with_byte_tokens(trained: Tokenizer) -> Tokenizer:
    """Inserts the byte tokens as ordinary vocabulary right after the special tokens.

    Passing them to the trainer as special tokens would make ``decode(skip_special_tokens=True)``
    drop them, losing every byte-fallback character.
    """
    spec = json.loads(trained.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))


def build_demo_tokenizer_json(vocab_size: int = 4000) -> str:
    """Trains the demo tokenizer and returns it serialized (``tokenizers`` JSON); deterministic."""
    if vocab_size < 512:
        raise ValueError(f"vocab_size must be >= 512 (it holds 256 byte tokens), got {vocab_size}")
    normalizer = normalizers.NFKC()
    # prepend_scheme="first" adds the word-boundary marker only at the start of the text, so the text
    # right after an added token such as "#Person1#은" gets no spurious space on decode.
    pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizer
    draft.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS) - len(SPEAKER_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    draft.train_from_iterator(_training_texts(), trainer)

    tokenizer = _with_byte_tokens(draft)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # Speaker tags are ordinary added tokens: summaries contain them, so decoding must keep them.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in SPEAKER_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", SPECIAL_TOKENS.index("</s>"))]
    )
    return tokenizer.to_str()


def wrap_tokenizer_json(serialized: str) -> PreTrainedTokenizerFast:
    """Wraps a serialized demo tokenizer as a fresh ``transformers`` fast tokenizer."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(serialized),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def build_demo_tokenizer(vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """Trains the demo tokenizer on the bundled train.csv (deterministic, well under 2 s)."""
    return wrap_tokenizer_json(build_demo_tokenizer_json(vocab_size))
