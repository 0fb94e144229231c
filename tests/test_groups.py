"""BM25 candidate pools for group-wise dual sampling, checked against rank_bm25."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from rank_bm25 import BM25Okapi

from pipeline.contrastive import groups
from pipeline.io import InputError, read_parquet
from pipeline.schema import EOT, GROUPS, PREPARED, SILENCE

WORDS = ("i have a dog cat pizza nurse hospital beach swim guitar band music car red old garden "
         "tomatoes books read mystery you ? . , do like what love my the is am work").split()


def corpus(n: int = 60, seed: int = 0) -> list[list[str]]:
    """Random contexts over a small vocabulary (lots of shared words and score ties), with an
    exact duplicate and two empty contexts."""
    rng = np.random.default_rng(seed)
    docs = [list(rng.choice(WORDS, size=rng.integers(1, 25))) for _ in range(n)]
    docs[7] = list(docs[3])  # identical contexts exclude each other
    docs[0] = []  # the bot opened the dialogue
    docs[11] = []
    return docs


def okapi_scores(docs, q):
    rows = [i for i, d in enumerate(docs) if d]
    s = BM25Okapi([docs[i] for i in rows], k1=1.5, b=0.75).get_scores(docs[q]).astype(np.float32)
    return dict(zip(rows, s.tolist(), strict=True))


def test_gcl_context_joins_truncates_and_leaves_silence_out():
    assert groups.gcl_context([SILENCE, "hi there", "hello !"], "how are you ?", 120) == [
        "hi", "there", EOT, "hello", "!", EOT, "how", "are", "you", "?"]
    assert groups.gcl_context([], SILENCE, 120) == []
    assert groups.gcl_context(["a b c", "d e"], "f g", 4) == ["d", "e", EOT, "f", "g"][-4:]
    assert groups.gcl_context(["a b c", "d e"], "f g", 3) == ["f", "g"]  # no leading EOT
    assert groups.gcl_context(["a b", "c"], "d", 3) == ["c", EOT, "d"]
    assert groups.gcl_context(["a b", "c d"], "e", 4) == ["c", "d", EOT, "e"]
    assert groups.gcl_context(["a", "c d"], "e", 5) == ["c", "d", EOT, "e"]  # no leading EOT


def test_top_k_equals_rank_bm25_ranking_and_excludes_self_and_duplicates():
    docs = corpus()
    pools = groups.bm25_pools(docs, top=10, bottom=10, block=16)
    for q, d in enumerate(docs):
        if not d:
            assert len(pools.rows[q]) == 0
            continue
        scores = okapi_scores(docs, q)
        allowed = {r: s for r, s in scores.items() if docs[r] != d}  # self and its duplicate out
        ranked = sorted(allowed, key=lambda r: (-allowed[r], r))
        top = pools.rows[q][: pools.n_top[q]].tolist()
        assert top == ranked[:10]
        np.testing.assert_allclose(pools.scores[q][:10], [allowed[r] for r in top], rtol=1e-6)
        assert q not in pools.rows[q] and (q not in (3, 7) or {3, 7}.isdisjoint(pools.rows[q]))
        assert not {0, 11} & set(pools.rows[q].tolist())  # empty contexts are no documents


def test_bottom_k_are_the_lowest_scoring():
    docs = corpus(seed=1)
    pools = groups.bm25_pools(docs, top=5, bottom=8, block=7)
    for q, d in enumerate(docs):
        if not d:
            continue
        scores = okapi_scores(docs, q)
        bottom = pools.rows[q][pools.n_top[q] :].tolist()
        assert len(bottom) == 8 and len(set(bottom)) == 8
        worst = max(scores[r] for r in bottom)
        others = [s for r, s in scores.items() if r not in bottom and docs[r] != d]
        assert min(others) >= worst
        assert pools.scores[q][pools.n_top[q] :].tolist() == sorted(pools.scores[q][pools.n_top[q] :].tolist())


def test_fast_pools_equal_the_rank_bm25_reference_exactly():
    docs = corpus(n=45, seed=2)
    fast = groups.bm25_pools(docs, top=6, bottom=6, block=8)
    slow = groups.rank_bm25_pools(docs, top=6, bottom=6)
    assert groups.top_agreement(fast, slow) == 1.0
    for q in range(len(docs)):
        assert fast.rows[q].tolist() == slow.rows[q].tolist()
        np.testing.assert_allclose(fast.scores[q], slow.scores[q], rtol=1e-6)


def test_tiny_corpus_top_and_bottom_do_not_overlap():
    docs = corpus(n=12, seed=5)[:9]  # 8 documents (row 0 empty), rows 3 and 7 identical
    fast = groups.bm25_pools(docs, top=4, bottom=4)
    slow = groups.rank_bm25_pools(docs, top=4, bottom=4)
    for q, d in enumerate(docs):
        rows = fast.rows[q].tolist()
        assert rows == slow.rows[q].tolist()
        others = sum(1 for x in docs if x and x != d)
        assert len(rows) == len(set(rows)) == (min(8, others) if d else 0)
        assert fast.n_top[q] == (4 if d else 0)


def test_bottom_ties_follow_a_per_query_order_not_the_file_order():
    # Every document shares nothing with the queries "x" and "y": all score 0 for them.
    docs = [["x"], ["y"]] + [[f"w{i}"] for i in range(40)]
    pools = groups.bm25_pools(docs, top=0, bottom=5)
    assert np.all(pools.scores[0] == 0) and np.all(pools.scores[1] == 0)
    assert pools.rows[0].tolist() != pools.rows[1].tolist()
    assert pools.rows[0].tolist() != [1, 2, 3, 4, 5]
    assert pools.rows[0].tolist() == groups.rank_bm25_pools(docs, top=0, bottom=5).rows[0].tolist()


def _dialogue_corpus(seed: int = 5):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(30)]
    docs = [list(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(120)]
    dialogues = [f"d{i // 6}" for i in range(len(docs))]  # 6 turns per dialogue, like real ones
    return docs, dialogues


def test_no_candidate_from_the_own_dialogue_when_excluded():
    docs, dialogues = _dialogue_corpus()
    for negatives in groups.NEGATIVES:
        pools = groups.bm25_pools(docs, top=5, bottom=5, block=32, dialogues=dialogues, negatives=negatives)
        for q, rows in enumerate(pools.rows):
            assert len(rows) == 10 and len(set(rows.tolist())) == 10
            assert all(dialogues[r] != dialogues[q] for r in rows)
    # ... while the default keeps them (the authors' pools): same-dialogue turns share history
    pools = groups.bm25_pools(docs, top=5, bottom=5, block=32)
    assert any(dialogues[r] == dialogues[q] for q, rows in enumerate(pools.rows) for r in rows)


def test_dialogue_exclusion_and_short_negatives_match_rank_bm25():
    docs, dialogues = _dialogue_corpus(7)
    fast = groups.bm25_pools(docs, top=4, bottom=6, block=16, dialogues=dialogues, min_negative_tokens=5)
    slow = groups.rank_bm25_pools(docs, top=4, bottom=6, dialogues=dialogues, min_negative_tokens=5)
    for q in range(len(docs)):
        assert fast.rows[q].tolist() == slow.rows[q].tolist()
        bottom = fast.rows[q][fast.n_top[q]:]
        assert all(len(docs[r]) >= 5 for r in bottom)


def test_random_negatives_are_seeded_eligible_and_not_top():
    docs, dialogues = _dialogue_corpus(9)
    a = groups.bm25_pools(docs, top=3, bottom=6, dialogues=dialogues, negatives="random", min_negative_tokens=4)
    b = groups.bm25_pools(docs, top=3, bottom=6, block=7, dialogues=dialogues, negatives="random",
                          min_negative_tokens=4)
    c = groups.bm25_pools(docs, top=3, bottom=6, dialogues=dialogues, negatives="random", min_negative_tokens=4,
                          seed=2)
    assert all(x.tolist() == y.tolist() for x, y in zip(a.rows, b.rows, strict=True))  # blocks do not matter
    assert any(x.tolist() != y.tolist() for x, y in zip(a.rows, c.rows, strict=True))  # the seed does
    for q, rows in enumerate(a.rows):
        top, rest = rows[: a.n_top[q]], rows[a.n_top[q]:]
        assert len(rest) == 6 and not set(top.tolist()) & set(rest.tolist())
        assert all(len(docs[r]) >= 4 for r in rest)
    with pytest.raises(ValueError, match="negatives"):
        groups.bm25_pools(docs, negatives="median")


def test_middle_negatives_straddle_the_median_rank():
    docs, dialogues = _dialogue_corpus(11)
    pools = groups.bm25_pools(docs, top=3, bottom=4, dialogues=dialogues, negatives="middle", min_negative_tokens=3)
    slow = groups.rank_bm25_pools(docs, top=3, bottom=10**6, dialogues=dialogues, min_negative_tokens=3)
    for q, rows in enumerate(pools.rows):
        rest = rows[pools.n_top[q]:].tolist()
        ranked = slow.rows[q][slow.n_top[q]:].tolist()  # every eligible document, lowest score first
        middle = len(ranked) // 2
        assert len(rest) == 4 and all(abs(ranked.index(r) - middle) <= 2 for r in rest), q
        assert all(len(docs[r]) >= 3 for r in rest)


def test_pick_is_exact_with_ties():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 4, size=(30, 50)).astype(np.float32)  # heavy ties everywhere
    values[5, :45] = np.inf  # fewer finite values than k
    tie = lambda r, c: (c * 7919 + r * 31) % 50  # noqa: E731
    for largest in (True, False):
        got = groups._pick(np.where(np.isinf(values), -np.inf, values) if largest else values, 8, largest, tie)
        for r in range(values.shape[0]):
            v = values[r] if not largest else -np.where(np.isinf(values[r]), -np.inf, values[r])
            expect = np.lexsort((tie(np.full(50, r), np.arange(50)), v))[:8]
            assert got[r].tolist() == expect.tolist()


def _prepared(n: int) -> pa.Table:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        turn = i % 4
        history = [SILENCE] if turn else []
        history += [" ".join(rng.choice(WORDS, size=5)) for _ in range(2 * turn)]
        rows.append({
            "example_id": f"train-{i // 4:05d}-{turn:02d}", "dialogue_id": f"train-{i // 4:05d}", "turn": turn,
            "persona": ["i like dogs"], "partner_persona": [], "history": history,
            "query": SILENCE if turn == 0 else " ".join(rng.choice(WORDS, size=6)),
            "response": " ".join(rng.choice(WORDS, size=6)), "candidates": [],
        })
    return pa.Table.from_pylist(rows, schema=PREPARED)


def _params(tmp_path, **over):
    p = {"top": 3, "bottom": 2, "context_tokens": 20, "k1": 1.5, "b": 0.75, "min_negative_tokens": 0} | over
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"groups": p}))


def test_stage_schema_alignment_and_identical_bytes(tmp_path, monkeypatch):
    from stages import groups as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    pq.write_table(_prepared(40), "data/prepared/train.parquet")
    pq.write_table(_prepared(24), "data/prepared/valid.parquet")
    _params(tmp_path)
    stage.main()
    first = (tmp_path / "data/groups/train.parquet").read_bytes()
    stage.main()
    assert (tmp_path / "data/groups/train.parquet").read_bytes() == first

    for split, n in (("train", 40), ("valid", 24)):  # each split retrieves within itself
        table = read_parquet(f"data/groups/{split}.parquet")
        assert table.schema == GROUPS
        assert table.column("example_id").to_pylist() == _prepared(n).column("example_id").to_pylist()
        for i, row in enumerate(table.to_pylist()):
            if i % 4 == 0:  # the bot opens: empty context, no pool
                assert row["candidate_rows"] == [] and row["is_top"] == []
            else:
                assert row["is_top"] == [True] * 3 + [False] * 2
                assert all(r % 4 for r in row["candidate_rows"])
                assert all(r // 4 != i // 4 for r in row["candidate_rows"])  # never the own dialogue
                assert len(row["bm25_scores"]) == 5
            assert row["msn_response_side"] is None and row["msn_context_side"] is None


def test_stage_rejects_bad_params(tmp_path, monkeypatch):
    from stages import groups as stage

    monkeypatch.chdir(tmp_path)
    _params(tmp_path, top=-1)
    with pytest.raises(InputError, match="groups.top"):
        stage.main()
    for bad, match in (({"negatives": "median"}, "groups.negatives"), ({"same_dialogue": "no"}, "groups.same_dialogue"),
                       ({"min_negative_tokens": 2.5}, "groups.min_negative_tokens"), ({"topp": 3}, "groups.topp")):
        _params(tmp_path, **bad)
        with pytest.raises(InputError, match=match):
            stage.main()
    _params(tmp_path)
    with pytest.raises(InputError, match="file not found"):
        stage.main()
