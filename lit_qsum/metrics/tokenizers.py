"""Unicode-aware tokenizers for ROUGE, selectable by name.

rouge-score and torchmetrics lowercase text and then replace every character outside ``[a-z0-9]`` with a
space, so Hangul (like any non-Latin script) tokenizes to nothing and scores 0. These tokenizers keep the
letters, digits and combining marks of every script. All of them apply NFKC and ``str.casefold`` first.

Speaker tags such as ``#Person1#`` become the token ``person1``. For ``"#Person1#은 7시에 예약한다."``:

==========  ===========================================  ======================================
name        splits on                                    tokens
==========  ===========================================  ======================================
default     whitespace, punctuation (P*), symbols (S*)   person1 은 7시에 예약한다
whitespace  whitespace; punctuation stripped from edges  person1은 7시에 예약한다
char        every character; keeps letters and digits   p e r s o n 1 은 7 시 에 예 약 한 다
morpheme    Kiwi morphemes, punctuation tags dropped     person1 은 7 시 에 예약 하 ᆫ다
==========  ===========================================  ======================================

``default`` also splits ``3.5`` into ``3`` and ``5`` (as rouge-score does) and keeps unspaced scripts
(Chinese, Japanese) as long runs: use ``char`` for those. ``morpheme`` is the one to report for Korean.
"""

import functools
import os
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, get_args

from lit_qsum.errors import UserInputError

if TYPE_CHECKING:
    from kiwipiepy import Kiwi

RougeTokenizer = Literal["default", "whitespace", "char", "morpheme"]
ROUGE_TOKENIZERS: tuple[str, ...] = get_args(RougeTokenizer)

_SPEAKER_TAG = re.compile(r"#(\w+)#")
# Kiwi's punctuation and symbol tags; SL (Latin), SH (hanja) and SN (numbers) are words and stay.
_KIWI_DROP_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB", "W_EMOJI"})


class MissingExtraError(UserInputError, ImportError):
    """An optional dependency is not installed; the message names the flag that needs it and the pip extra."""


def check_tokenizer(tokenizer: str, *, installed: bool = True) -> None:
    """Raise if ``tokenizer`` is unknown or, with ``installed``, is ``morpheme`` without kiwipiepy installed."""
    if tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"--model.rouge_tokenizer must be one of {ROUGE_TOKENIZERS}, got {tokenizer!r}")
    if tokenizer == "morpheme" and installed:
        _import_kiwipiepy()


def tokenize(text: str, tokenizer: RougeTokenizer = "default") -> list[str]:
    """Split ``text`` into ROUGE tokens with the named tokenizer."""
    if tokenizer not in _TOKENIZERS:
        check_tokenizer(tokenizer)
    return _TOKENIZERS[tokenizer](_normalize(text))


def _normalize(text: str) -> str:
    """NFKC (full-width forms and ligatures fold to plain ones) and casefold (``Straße`` -> ``strasse``)."""
    return unicodedata.normalize("NFKC", text).casefold()


def _is_word_char(ch: str) -> bool:
    """True for letters, digits and combining marks of any script (Unicode categories L*, N*, M*)."""
    return unicodedata.category(ch)[0] in "LNM"


def _default(text: str) -> list[str]:
    return "".join(ch if _is_word_char(ch) else " " for ch in text).split()


def _whitespace(text: str) -> list[str]:
    tokens = (_strip_edges(tok) for tok in _SPEAKER_TAG.sub(r"\1", text).split())
    return [tok for tok in tokens if tok]


def _strip_edges(token: str) -> str:
    start, end = 0, len(token)
    while start < end and not _is_word_char(token[start]):
        start += 1
    while end > start and not _is_word_char(token[end - 1]):
        end -= 1
    return token[start:end]


def _char(text: str) -> list[str]:
    return [ch for ch in text if _is_word_char(ch)]


def _morpheme(text: str) -> list[str]:
    _import_kiwipiepy()  # first: names the pip extra when kiwipiepy is missing
    from kiwipiepy import Match

    # Pinning each speaker tag as one proper noun keeps it whole and lets Kiwi tag the particle after it
    # (``#Person1#은`` -> ``#person1#`` NNP + ``은`` JX); Kiwi's own hashtag matcher would glue ``#은``.
    spans = [(m.start(), m.end(), "NNP") for m in _SPEAKER_TAG.finditer(text)]
    tokens = _kiwi(os.getpid()).tokenize(
        text, match_options=Match.ALL & ~(Match.HASHTAG | Match.MENTION), pretokenized=spans or None
    )
    return [tok.form.strip("#") for tok in tokens if tok.tag not in _KIWI_DROP_TAGS]


def _import_kiwipiepy() -> None:
    try:
        import kiwipiepy  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(
            "--model.rouge_tokenizer morpheme needs kiwipiepy: pip install 'lit-qsum[ko]'"
        ) from err


@functools.cache
def _kiwi(pid: int) -> "Kiwi":
    """Build one Kiwi analyzer per process; ``pid`` is the key so a forked child builds its own."""
    _import_kiwipiepy()
    from kiwipiepy import Kiwi

    return Kiwi()


_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "default": _default,
    "whitespace": _whitespace,
    "char": _char,
    "morpheme": _morpheme,
}
