"""The shared vocabulary (methods §1: one vocabulary for context, persona and response).

Built from the training text only: specials first (``schema.SPECIALS``, fixed ids), then
tokens by count descending, ties by token, so the ids never depend on input order.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

from pipeline.io import read_parquet
from pipeline.schema import SPECIALS, VOCAB


def count_tokens(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(text.split())
    return counts


def training_texts(table: pa.Table) -> Iterable[str]:
    """Every distinct piece of training text once: each dialogue's persona sentences, then
    each utterance (query and response) of each bot turn.

    Counting ``history`` as well would count an utterance once per later turn, and persona
    once per turn, which skews the counts toward long dialogues.
    """
    seen_dialogues: set[str] = set()
    cols = table.select(["dialogue_id", "persona", "partner_persona", "query", "response"]).to_pydict()
    for did, persona, partner, query, response in zip(*cols.values(), strict=True):
        if did not in seen_dialogues:
            seen_dialogues.add(did)
            yield from persona
            yield from partner
        yield query
        yield response


def build_vocab(counts: Counter, max_size: int, min_count: int = 1) -> pa.Table:
    """Specials, then tokens with ``count >= min_count`` by (count desc, token asc), ``max_size`` in all."""
    if max_size < len(SPECIALS):
        raise ValueError(f"max_vocab {max_size} is smaller than the {len(SPECIALS)} special tokens")
    rest = sorted(((t, c) for t, c in counts.items() if c >= min_count and t not in SPECIALS),
                  key=lambda tc: (-tc[1], tc[0]))
    rest = rest[: max_size - len(SPECIALS)]
    tokens = list(SPECIALS) + [t for t, _ in rest]
    freq = [counts.get(t, 0) for t in SPECIALS] + [c for _, c in rest]
    return pa.Table.from_pydict({"token": tokens, "count": freq}, schema=VOCAB)


def load_vocab(path: str | os.PathLike) -> list[str]:
    """Token list; a token's id is its position."""
    return read_parquet(path, columns=["token"]).column("token").to_pylist()


def token_ids(vocab: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab)}
