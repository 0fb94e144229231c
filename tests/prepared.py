"""data/prepared/*.parquet for tests of the stages after `prepare`, without running it.

Rows come from the tiny ParlAI-format corpus of tests/corpus.py, normalised and laid out
as ``schema.PREPARED``; the vocabulary is built with pipeline.preprocessing.vocab, as `prepare` does.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import yaml

from pipeline.io import write_parquet
from pipeline.preprocessing.text import normalize
from pipeline.preprocessing.vocab import build_vocab, count_tokens, training_texts
from pipeline.schema import PREPARED, SILENCE, SPLITS
from tests.corpus import dialogue_lines


def table(split: str, dialogues: list[tuple[list[str], list[tuple[str, str]]]]) -> pa.Table:
    """``dialogues``: (persona sentences, [(query, response), ...]) each, already normalised."""
    cols: dict[str, list] = {name: [] for name in PREPARED.names}
    for d, (persona, turns) in enumerate(dialogues):
        history: list[str] = []
        for t, (query, response) in enumerate(turns):
            cols["example_id"].append(f"{split}-{d:05d}-{t:02d}")
            cols["dialogue_id"].append(f"{split}-{d:05d}")
            cols["turn"].append(t)
            cols["persona"].append(list(persona))
            cols["partner_persona"].append([])
            cols["history"].append(list(history))
            cols["query"].append(query)
            cols["response"].append(response)
            cols["candidates"].append([])
            history += ([] if query == SILENCE else [query]) + [response]
    return pa.Table.from_pydict(cols, schema=PREPARED)


def generated_dialogues(n: int, rng: random.Random, silence: bool):
    out = []
    for d in range(n):
        persona, turns = [], []
        for line in dialogue_lines(rng, silence_first=silence and d % 2 == 0):
            text = line.split(" ", 1)[1]
            if text.startswith("your persona: "):
                persona.append(normalize(text[len("your persona: ") :], persona=True))
            else:
                x, y = text.split("\t")
                turns.append((SILENCE if x == "__SILENCE__" else normalize(x), normalize(y)))
        out.append((persona, turns))
    return out


def write_prepared(root: str | Path, sizes=(24, 8, 8), seed: int = 0) -> Path:
    """Write ``root``/data/prepared/{train,valid,test,vocab}.parquet; return ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    tables = {
        split: table(split, generated_dialogues(n, rng, silence=split == "train"))
        for split, n in zip(SPLITS, sizes, strict=True)
    }
    for split, t in tables.items():
        write_parquet(t, root / "data/prepared" / f"{split}.parquet")
    vocab = build_vocab(count_tokens(training_texts(tables["train"])), max_size=20000)
    write_parquet(vocab, root / "data/prepared/vocab.parquet")
    return root


def write_params(root: str | Path, **sections: dict) -> Path:
    """A params.yaml with the project's sections, overridden by ``sections``."""
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    path = Path(root) / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path
