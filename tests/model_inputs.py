"""Every input the generators read, fabricated for a tiny corpus (tests only).

Writes ``<root>/data/{prepared,embeddings,pmi,persona_labels,congeneric}`` with the
layouts of ``pipeline.schema`` from the dialogues of ``tests/corpus.py``, using cheap
stand-ins for the real stages (word overlap instead of PMI/BERT/TF-IDF), so model tests
do not depend on the preprocessing stages being finished.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.preprocessing.text import content_words, normalize
from tests.corpus import dialogue_lines


def _dialogues(n: int, rng: random.Random, silence: bool):
    for d in range(n):
        persona, turns = [], []
        for line in dialogue_lines(rng, silence_first=silence and d % 2 == 0):
            text = line.split(" ", 1)[1]
            if text.startswith("your persona: "):
                persona.append(normalize(text[len("your persona: "):], persona=True))
            else:
                x, y = text.split("\t")
                turns.append((normalize(x), normalize(y)))
        yield persona, turns


def _write(rows: list[dict], sch: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=sch), path)


def write_model_inputs(root: str | Path, sizes=(24, 8, 8), seed: int = 0, emb_dim: int = 16,
                       k_max: int = 5) -> Path:
    """Write the tiny corpus' model inputs under ``<root>/data``; return that directory."""
    data = Path(root) / "data"
    rng = random.Random(seed)
    prepared = {}
    for split, n in zip(schema.SPLITS, sizes, strict=True):
        rows = []
        for d, (persona, turns) in enumerate(_dialogues(n, rng, silence=split == "train")):
            history = []
            for t, (x, y) in enumerate(turns):
                rows.append({"example_id": f"{split}-{d:05d}-{t:02d}", "dialogue_id": f"{split}-{d:05d}",
                             "turn": t, "persona": persona, "partner_persona": [], "history": list(history),
                             "query": x, "response": y, "candidates": []})
                history += [x, y]
        prepared[split] = rows
        _write(rows, schema.PREPARED, data / "prepared" / f"{split}.parquet")

    counts = Counter(w for r in prepared["train"] for s in (*r["persona"], r["query"], r["response"])
                     for w in s.split())
    tokens = list(schema.SPECIALS) + sorted((w for w in counts if w not in schema.SPECIALS),
                                            key=lambda w: (-counts[w], w))
    _write([{"token": t, "count": counts.get(t, 0)} for t in tokens], schema.VOCAB, data / "prepared" / "vocab.parquet")
    vectors = np.random.default_rng(seed).normal(0, 0.3, (len(tokens), emb_dim)).astype(np.float32)
    _write([{"token": t, "vector": v.tolist()} for t, v in zip(tokens, vectors, strict=True)], schema.EMBEDDINGS,
           data / "embeddings" / "vectors.parquet")

    masked = {}
    for split, rows in prepared.items():
        pmi_rows, label_rows = [], []
        for r in rows:
            pwords = set().union(*(content_words(p) for p in r["persona"]))
            specific = sorted(content_words(r["query"]) & pwords)[:5]
            mq = " ".join(schema.KEY if w in specific else w for w in r["query"].split())
            pmi_rows.append({"example_id": r["example_id"], "specific_words": specific,
                             "specific_scores": [4.0] * len(specific), "masked_query": mq})
            sims = [len(content_words(p) & content_words(r["response"])) / 3 for p in r["persona"]]
            best = max(range(len(sims)), key=lambda i: (sims[i], -i))
            query_sims = [len(content_words(p) & content_words(r["query"])) / 3 for p in r["persona"]]
            label_rows.append({"example_id": r["example_id"], "optimal_persona": best if sims[best] > 0 else None,
                               "similarities": sims, "query_similarities": query_sims})
        masked[split] = [p["masked_query"] for p in pmi_rows]
        _write(pmi_rows, schema.PMI, data / "pmi" / f"{split}.parquet")
        _write(label_rows, schema.PERSONA_LABELS, data / "persona_labels" / f"{split}.parquet")

    train_sets = [set(q.split()) for q in masked["train"]]
    for split, rows in prepared.items():
        cong = []
        for i, (r, q) in enumerate(zip(rows, masked[split], strict=True)):
            words = set(q.split())
            scores = [(len(words & t) / (len(words | t) or 1), j) for j, t in enumerate(train_sets)
                      if not (split == "train" and j == i)]
            best = sorted(scores, key=lambda s: (-s[0], s[1]))[:k_max]
            cong.append({"example_id": r["example_id"], "congeneric_rows": [j for _, j in best],
                         "congeneric_scores": [s for s, _ in best]})
        _write(cong, schema.CONGENERIC, data / "congeneric" / f"{split}.parquet")
    return data


def tiny_params(**sections) -> dict:
    """params.yaml-shaped dict for tiny, fast models; ``sections`` update its sections."""
    params = {
        "train": {"seed": 1, "epochs": 2, "batch_size": 16, "eval_batch_size": 32, "lr": 0.003, "clip": 5.0,
                  "lr_factor": 0.5, "lr_patience": 1, "lr_floor": 1e-5, "validate_every": 0,
                  "early_stopping": 0, "checkpoint_every": 4, "max_steps": 0, "log_every": 2,
                  "bucket": True, "device": "cpu", "precision": "fp32"},
        "model": {"emb_dim": None, "hidden": 16, "layers": 1, "dropout": 0.1, "attention": "dot",
                  "tie_embeddings": True, "freeze_embeddings": False, "max_context_tokens": 40,
                  "max_response_tokens": 30, "max_persona_tokens": 20, "max_persona_sentences": 5},
        "seq2seq": {"attention": "dot"},
        "gpmn": {"attention": "dot", "idf": "persona"},
        "generate": {"method": "greedy", "beam_size": 3, "length_penalty": 0.0, "max_len": 12,
                     "batch_size": 16, "device": "cpu"},
    }
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    return params


def build_tiny(name: str, params: dict, data: Path, vocab, split: str = "train", seed: int = 0):
    """Model ``name`` with ``params`` (its full model params) on the tiny inputs under
    ``data``, and the split it reads."""
    import torch

    from pipeline.dataset import load_split
    from pipeline.models import ModelContext, build_model, get_model_class
    from pipeline.models.layers import load_embedding_matrix

    ds = load_split(split, vocab, get_model_class(name).data_config(params), data)
    emb = load_embedding_matrix(Path(data) / "embeddings" / "vectors.parquet", vocab.itos)
    torch.manual_seed(seed)
    return build_model(name, params, ModelContext.from_vocab(vocab, emb, ds)), ds
