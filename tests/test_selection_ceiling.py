import numpy as np
import pyarrow as pa
import pytest

from pipeline.evaluation import selection_ceiling as sc
from pipeline.io import write_parquet
from pipeline.schema import PERSONA_LABELS


def _write(tmp_path, split, rows):
    """rows: (dialogue, turn, query, persona, label, response cosines, query cosines), any order."""
    write_parquet(pa.table({"dialogue_id": [r[0] for r in rows], "turn": pa.array([r[1] for r in rows], pa.int32()),
                            "query": [r[2] for r in rows], "persona": [r[3] for r in rows]}),
                  tmp_path / "prepared" / f"{split}.parquet")
    write_parquet(pa.table({"example_id": [f"{r[0]}-{r[1]}" for r in rows], "optimal_persona": [r[4] for r in rows],
                            "similarities": [r[5] for r in rows], "query_similarities": [r[6] for r in rows]},
                           schema=PERSONA_LABELS), tmp_path / "persona_labels" / f"{split}.parquet")


P = ["i like cats", "i ski"]


def test_features_carry_what_earlier_turns_of_the_same_dialogue_said(tmp_path):
    _write(tmp_path, "valid", [
        ("d1", 1, "and you ?", P, None, [0.2, 0.1], [0.3, 0.4]),  # stored out of order: sorted by turn
        ("d1", 0, "hi", P, 0, [0.9, 0.3], [0.5, 0.1]),
        ("d2", 0, "hello", P, 1, [0.1, 0.8], [0.2, 0.6]),
        ("d3", 0, "no persona", [], None, [], []),
    ])
    turns = sc.load_turns("valid", tmp_path)
    assert [t["query"] for t in turns] == ["hi", "and you ?", "hello"]  # the persona-less turn is left out
    np.testing.assert_allclose(turns[0]["features"], [[0.5, 0, 0], [0.1, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(turns[1]["features"], [[0.3, 0.9, 1], [0.4, 0.3, 0]], atol=1e-6)
    np.testing.assert_allclose(turns[2]["features"][:, 1:], 0)  # another dialogue starts afresh
    # accuracy over labelled turns only: the first right, the third wrong
    assert sc.accuracy([0, 1, 0], turns) == 0.5


def test_conditional_logit_learns_a_feature_that_decides():
    rng = np.random.default_rng(0)
    turns = []
    for _ in range(200):
        x = rng.normal(size=(4, 3))
        turns.append({"features": x, "label": int(np.argmax(x[:, 0] - 2 * x[:, 2]))})
    w = sc.fit_conditional_logit(turns, [0, 2])
    assert w[0] > 0 > w[1]
    assert sc.accuracy([int(np.argmax(t["features"][:, [0, 2]] @ w)) for t in turns], turns) == pytest.approx(1.0)
    assert sc.accuracy([int(np.argmax(t["features"][:, 1])) for t in turns], turns) < 0.5


def test_bilinear_selector_learns_a_map_retrieval_misses_and_the_ridge_holds_it_at_retrieval():
    """Labels decided by q' A p with A a swap of two axes: retrieval (W = I) is poor, the
    unpenalised bilinear fit finds A; a large ridge keeps W at the identity."""
    rng = np.random.default_rng(0)
    d, names, vectors = 4, [], []

    def sentence(v):
        names.append(f"s{len(names)}")
        vectors.append(v / np.linalg.norm(v))
        return names[-1]

    a = np.eye(d)[[1, 0, 2, 3]]
    splits = {}
    for split, n in (("train", 300), ("valid", 100), ("test", 100)):
        turns = []
        for _ in range(n):
            q = sentence(rng.normal(size=d))
            persona = [sentence(rng.normal(size=d)) for _ in range(3)]
            qv, pv = vectors[names.index(q)], np.stack([vectors[names.index(p)] for p in persona])
            turns.append({"query": q, "persona": persona, "label": int(np.argmax(pv @ a @ qv)),
                          "features": np.stack([pv @ qv, np.zeros(3), np.zeros(3)], axis=1)})
        splits[split] = turns
    out = sc.bilinear(splits, np.stack(vectors), {s: i for i, s in enumerate(names)}, ridges=(100.0, 0.0))
    stiff, free = out["fits"]
    retrieval = sc.accuracy([int(np.argmax(t["features"][:, 0])) for t in splits["test"]], splits["test"])
    assert stiff["test"] == pytest.approx(retrieval, abs=0.02) and stiff["distance_from_identity"] < 0.05
    assert free["test"] > max(0.8, retrieval + 0.2) and out["chosen"] == free
