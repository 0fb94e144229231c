"""Text normalisation as PEDNet did it (methods §1) and the stop-word list both papers use.

Persona-Chat is already lower-cased and space-tokenised by ParlAI; PEDNet additionally
expands contractions, collapses consecutive duplicate tokens and strips the trailing
period of persona sentences. Everything downstream splits on single spaces.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pipeline.schema import EOT, SILENCE

# Whole-token exceptions first: the regular rule would give "ca not" / "wo not".
_EXCEPTIONS = {
    "can't": ["cant"],  # the authors' files keep "cant" as one word
    "cannot": ["can", "not"],
    "won't": ["will", "not"],
    "shan't": ["shall", "not"],
    "ain't": ["is", "not"],
    "let's": ["let", "us"],
}
_SUFFIXES = (
    ("n't", "not"),
    ("'ve", "have"),
    ("'re", "are"),
    ("'ll", "will"),
    ("'m", "am"),
    ("'d", "would"),
    ("'s", "is"),
)
_SPACES = re.compile(r"\s+")


def expand_token(token: str) -> list[str]:
    if token in _EXCEPTIONS:
        return _EXCEPTIONS[token]
    for suffix, word in _SUFFIXES:
        if token.endswith(suffix) and len(token) > len(suffix):
            return [token[: -len(suffix)], word]
    return [token]


def normalize(text: str, persona: bool = False) -> str:
    """Lower-case, expand contractions, collapse repeats; persona: drop trailing period."""
    tokens: list[str] = []
    for raw in _SPACES.split(text.strip().lower()):
        if not raw:
            continue
        for tok in expand_token(raw):
            if not tokens or tokens[-1] != tok:  # "hi hi hi" -> "hi", ". . ." -> "."
                tokens.append(tok)
    if persona:
        while tokens and tokens[-1] == ".":
            tokens.pop()
        if tokens and tokens[-1].endswith(".") and len(tokens[-1]) > 1:  # "brat." (untokenised)
            tokens[-1] = tokens[-1].rstrip(".")
    return " ".join(tokens)


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """English list of the `stop-words` package plus , . ! ? (what ParlAI used), with the
    halves of expanded contractions so normalised text is filtered the same way."""
    from stop_words import get_stop_words

    words = set(get_stop_words("en"))
    for w in list(words):
        for part in expand_token(w):
            words.add(part)
    words.update({",", ".", "!", "?"})
    return frozenset(words)


def content_words(text: str) -> set[str]:
    """Non-stop-word tokens of a normalised string (PEDNet's W_Y, W_p)."""
    sw = stop_words()
    return {t for t in text.split() if t not in sw}


def gcl_context(history: list[str], query: str, max_tokens: int) -> list[str]:
    """The GCL paper's multi-turn context: both speakers' utterances, oldest first, joined
    by the end-of-turn token, cut to the last ``max_tokens`` tokens (0 = all). The
    ``__silence__`` placeholder is left out, so the bot's opening turn has no context."""
    utterances = [u for u in (*(history or []), query) if u and u != SILENCE]
    tokens = f" {EOT} ".join(utterances).split()
    tokens = tokens[-max_tokens:] if max_tokens > 0 else tokens
    while tokens and tokens[0] == EOT:  # truncation may start on a separator
        tokens = tokens[1:]
    return tokens
