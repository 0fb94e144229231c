"""Matchers besides MSN (pipeline/contrastive/matching.py, stages/matcher.py, score_groups' other scorers)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rank_bm25 import BM25Okapi

from pipeline.contrastive import groups, matching
from pipeline.contrastive.matching import (
    SEPARATOR,
    BM25Ranker,
    MatcherConfig,
    MiniLMMatcher,
    Platt,
    context_text,
    eval_candidates,
    fit_platt,
    make_pairs,
)
from pipeline.contrastive.msn import load_msn_data, ranking_metrics, valid_candidates
from pipeline.dataset import Vocab
from pipeline.io import InputError
from pipeline.preprocessing import persona_labels as pl
from pipeline.schema import EOT, GROUPS, SILENCE
from tests.prepared import write_params, write_prepared

torch.set_num_threads(1)

MSN_EVAL = {"seed": 1, "eval_candidates": 10, "eval_examples": 12}
TINY = {"max_steps": 2, "batch_size": 4, "max_context_length": 32, "max_response_length": 16,
        "encode_batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def matcher():
    return MiniLMMatcher(pl.BUNDLED, max_context_length=64, max_response_length=32, device="cpu")


# -- texts and candidates ----------------------------------------------------------------
def test_context_text_renders_gcl_context():
    pairs = make_pairs([["hi there", "hello you"], []], ["how are you ?", SILENCE], ["fine", "hi"], 120)
    assert pairs.contexts[0] == f"hi there{SEPARATOR}hello you{SEPARATOR}how are you ?"
    assert pairs.context_tokens[0] == "hi there hello you how are you ?".split()
    assert pairs.contexts[1] == SILENCE and pairs.context_tokens[1] == []
    # truncation keeps the last tokens and never starts on a separator
    short = make_pairs([["a b c", "d e"]], ["f g"], ["x"], 5)
    assert short.contexts[0] == f"d e{SEPARATOR}f g"
    assert context_text(["a", EOT, EOT, "b"]) == f"a{SEPARATOR}b"


def test_eval_candidates_are_msns(tmp_path):
    root = write_prepared(tmp_path)
    vocab = Vocab.load(root / "data/prepared/vocab.parquet")
    valid = load_msn_data(root / "data/prepared/valid.parquet", vocab, 20)
    texts = pq.read_table(root / "data/prepared/valid.parquet").column("response").to_pylist()
    for limit in (None, 12):
        np.testing.assert_array_equal(eval_candidates(texts, 10, 3, limit), valid_candidates(valid, 10, 3, limit))


# -- calibration -------------------------------------------------------------------------
def test_platt_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.2, 40000)
    y = rng.random(len(x)) < 1 / (1 + np.exp(-(8.0 * x - 2.0)))
    p = fit_platt(x, y)
    assert p.a == pytest.approx(8.0, rel=0.05) and p.b == pytest.approx(-2.0, abs=0.1)
    q = p(np.array([-1e3, 0.25, 1e3]))
    assert np.all((q > 0) & (q < 1)) and q[1] == pytest.approx(1 / (1 + np.exp(-(p.a * 0.25 + p.b))))


def test_platt_is_finite_on_separable_data():
    p = fit_platt(np.r_[np.zeros(50), np.ones(50)], np.r_[np.zeros(50), np.ones(50)])
    assert np.isfinite([p.a, p.b]).all() and p.a > 0
    with pytest.raises(ValueError):
        fit_platt([0.1, 0.2], [1, 1])


# -- BM25 --------------------------------------------------------------------------------
def test_bm25_equals_rank_bm25_on_training_responses():
    docs = ["i love my dog", "pizza is the best food", "i play guitar in a band", "my dog likes pizza too",
            "the beach is nice"]
    toks = [d.split() for d in docs]
    ranker = BM25Ranker.fit(toks, 1.5, 0.75)
    query = "do you like pizza or your dog ? dog".split()
    ref = BM25Okapi(toks, k1=1.5, b=0.75).get_scores(query)
    got = ranker.score_pairs([query], toks, np.zeros(len(docs), dtype=int), np.arange(len(docs)))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_bm25_ranks_the_overlapping_response_first():
    train = [f"filler words number {i} here" for i in range(30)] + ["i grow tomatoes in my garden"]
    ranker = BM25Ranker.fit([r.split() for r in train])
    valid = make_pairs([[] for _ in range(3)],
                       ["do you grow tomatoes ?", "my band plays jazz guitar", "i swim at the zebra beach"],
                       ["tomatoes grow well in my garden", "guitar and jazz with my band", "zebra beach swim"], 0)
    cands = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    scores = matching.bm25_candidate_scores(ranker, valid, cands)
    assert ranking_metrics(scores)["MRR"] == 1.0
    assert scores[2, 0] > 0  # words unseen in training ("zebra") still count, with df = 0's idf


# -- MiniLM ------------------------------------------------------------------------------
SENTENCES = ["i have a big dog that loves the park", "my favorite food is pepperoni pizza",
             "i work night shifts as a nurse at the hospital", "i play the electric guitar in a rock band",
             "we live in a small house near the beach", "i read mystery novels before bed",
             "my old red car broke down again", "i grow tomatoes and peppers in my garden",
             "i am studying chemistry at the university", "my sister just had a baby girl",
             "winter is my favorite season because of skiing", "i collect vintage postage stamps"]


def test_zero_shot_ranks_an_exact_copy_first(matcher):
    n = len(SENTENCES)
    valid = make_pairs([[] for _ in range(n)], SENTENCES, SENTENCES, 0)
    cands = eval_candidates(valid.responses, 10, 1)
    scores = matching.minilm_candidate_scores(matcher, valid, cands)
    assert ranking_metrics(scores)["R10@1"] == 1.0
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)  # cosine of identical unit vectors
    direct = matcher.score([valid.contexts[1]], [valid.responses[cands[1, 3]]])
    assert direct[0] == pytest.approx(scores[1, 3], abs=1e-5)


def test_long_contexts_keep_their_end(matcher):
    end = "i grow tomatoes in my garden"
    long = " ".join(["filler"] * 200) + " " + end
    v = matcher.encode_contexts([long, end])
    ids = matcher.tokenize([long], matcher.max_context_length, "left")[0]
    tok = matcher.enc.tokenizer
    assert len(ids) == matcher.max_context_length and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids[1:-1]).endswith(end)
    right = matcher._encode([long], matcher.max_context_length, "right", "")  # only filler left
    assert float(v[0] @ v[1]) > float(right[0] @ v[1]) + 0.2
    assert tok.truncation_side == "right"  # restored


def test_encode_matches_pooling_of_the_training_path(matcher):
    """encode() (inference) and pooled() (the fine-tuning path) give the same vectors."""
    ids = matcher.tokenize(SENTENCES[:3], 32, "right")
    with torch.no_grad():
        train_path = pl.pooled(matcher.enc, pl._pad(matcher.enc, ids)).numpy()
    np.testing.assert_allclose(pl.unit(train_path), matcher.encode_responses(SENTENCES[:3]), atol=1e-5)


def test_two_fine_tuning_steps_write_a_loadable_checkpoint(tmp_path):
    m = MiniLMMatcher(pl.BUNDLED, max_context_length=24, max_response_length=16, device="cpu")
    before = m.encode_responses(SENTENCES[:3])
    pairs = make_pairs([[s] for s in SENTENCES], SENTENCES[::-1], SENTENCES, 0)
    stats = matching.fine_tune(m, pairs, matching.FineTuneConfig(batch_size=4, max_steps=2, lr=1e-4))
    assert stats["steps"] == 2 and np.isfinite(stats["train_loss"]) and not m.enc.model.training
    after = m.encode_responses(SENTENCES[:3])
    assert not np.allclose(before, after, atol=1e-6)
    m.save(tmp_path / "ck")
    loaded = MiniLMMatcher(tmp_path / "ck", max_context_length=24, max_response_length=16, device="cpu")
    np.testing.assert_allclose(loaded.encode_responses(SENTENCES[:3]), after, atol=1e-5)


# -- params ------------------------------------------------------------------------------
@pytest.mark.parametrize("params, problem", [
    ({"epochs": 1, "nope": 3}, "matcher.nope: unknown key"),
    ({"batch_size": 1}, "matcher.batch_size"),
    ({"lr": "fast"}, "matcher.lr"),
    ({"epochs": True}, "matcher.epochs"),
    ({"precision": "float16"}, "matcher.precision"),
    ({"bm25_b": 1.5}, "matcher.bm25_b"),
    ({"symmetric": "yes"}, "matcher.symmetric"),
])
def test_bad_params_are_input_errors(params, problem):
    with pytest.raises(InputError) as e:
        MatcherConfig.from_params(params)
    assert e.value.path == "params.yaml" and e.value.message.startswith(problem)


def test_params_defaults_and_floats():
    cfg = MatcherConfig.from_params({"lr": 1, "scale": 20})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.epochs == 1 and cfg.encoder == pl.BUNDLED


def test_stage_rejects_bad_params_before_loading(tmp_path, monkeypatch):
    from stages import matcher as stage
    from stages import negative_options, score_groups

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, matcher={"epochs": 0}, score_groups={"scorer": "tfidf"})
    with pytest.raises(InputError, match="matcher.epochs"):
        stage.main()
    with pytest.raises(InputError, match="score_groups.scorer"):
        score_groups.main()
    write_params(tmp_path, score_groups={"scorer": "msn"})
    with pytest.raises(InputError, match="score_groups.scorer: msn"):
        negative_options.main([])


# -- the stage and the pools -------------------------------------------------------------
def groups_of(prepared: pa.Table) -> pa.Table:
    n = prepared.num_rows
    opening = [q == SILENCE for q in prepared.column("query").to_pylist()]
    cands = [None if i == 1 else [] if opening[i] else [(i + j) % n for j in range(1, 5)] for i in range(n)]
    sizes = [len(c or []) for c in cands]
    return pa.Table.from_pydict({
        "example_id": prepared.column("example_id").to_pylist(),
        "candidate_rows": cands,
        "bm25_scores": [None if c is None else [4.0 - j for j in range(len(c))] for c in cands],
        "is_top": [None if c is None else [j < 2 for j in range(s)] for c, s in zip(cands, sizes, strict=True)],
        "msn_response_side": [None] * n,
        "msn_context_side": [None] * n,
    }, schema=GROUPS)


@pytest.mark.slow
def test_stage_fine_tunes_writes_a_loadable_checkpoint_and_scores_pools(tmp_path, monkeypatch):
    from stages import matcher as stage
    from stages import negative_options, score_groups

    root = write_prepared(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PIPELINE_NO_PROGRESS", "1")
    (root / "reports").mkdir()
    (root / "reports/msn.json").write_text(json.dumps({"R10@1": 0.3, "R10@2": 0.4, "R10@5": 0.8, "MRR": 0.5,
                                                      "train_seconds": 1.0}))
    report = stage.main(params=TINY, msn_params=MSN_EVAL)
    for name in ("bm25", "minilm_zeroshot", "minilm_finetuned", "msn"):
        assert set(report[name]) >= {"R10@1", "R10@2", "R10@5", "MRR", "train_seconds"}, name
    assert report["minilm_finetuned"]["steps"] == 2 and report["candidates"] == {"count": 10, "examples": 12,
                                                                                   "seed": 1}
    assert json.loads((root / "reports/matchers.json").read_text())["best"] == report["best"]
    ck = root / "checkpoints/matcher"
    record = matching.read_calibration(ck)
    assert set(record["scorers"]) == {"minilm", "minilm_zeroshot", "bm25"}
    # the checkpoint loads and differs from the zero-shot encoder after 2 steps
    tuned = MiniLMMatcher(ck, 32, 16, device="cpu")
    zero = MiniLMMatcher(pl.BUNDLED, 32, 16, device="cpu")
    a, b = tuned.encode_responses(SENTENCES[:2]), zero.encode_responses(SENTENCES[:2])
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-6)

    prepared = pq.read_table(root / "data/prepared/train.parquet")
    (root / "data/groups").mkdir()
    pq.write_table(groups_of(prepared), root / "data/groups/train.parquet")
    pq.write_table(groups_of(pq.read_table(root / "data/prepared/valid.parquet")), root / "data/groups/valid.parquet")
    for scorer in ("bm25", "minilm"):
        write_params(root, score_groups={"scorer": scorer, "max_pairs": 64})
        score_groups.main()
        table = pq.read_table(root / "data/msn_scores/train.parquet")
        assert table.schema.equals(GROUPS)
        rows = table.column("msn_response_side").to_pylist()
        assert rows[1] is None and all(r == [] for r, q in zip(rows, prepared.column("query").to_pylist(),
                                                                strict=True) if q == SILENCE)
        q = [x for r in rows if r for x in r] + [x for r in table.column("msn_context_side").to_pylist() if r for x in r]
        assert q and all(0 < x < 1 for x in q)
    # the minilm q's are the calibrated cosines of the pairs
    train = matching.load_pairs(root / "data/prepared/train.parquet", record["context_tokens"])
    i = next(k for k, r in enumerate(rows) if r)
    j = table.column("candidate_rows")[i].as_py()[0]
    cos = tuned.score([train.contexts[i]], [train.responses[j]])[0]
    platt = Platt(**record["scorers"]["minilm"]["platt"])
    assert rows[i][0] == pytest.approx(float(platt(round(float(cos), 5))), abs=2e-6)
    cos = tuned.score([train.contexts[j]], [train.responses[i]])[0]
    assert table.column("msn_context_side")[i].as_py()[0] == pytest.approx(float(platt(round(float(cos), 5))),
                                                                           abs=2e-6)

    # the negatives probe: every option of groups.negatives, built, scored and selected
    write_params(root, score_groups={"scorer": "bm25", "max_pairs": 64}, gcl={"k": 1},
                 groups={"top": 2, "bottom": 3, "min_negative_tokens": 0})
    probe = negative_options.main(["--out", "reports/probes/negative_options.json"])
    assert set(probe["options"]) == set(groups.NEGATIVES) and "precision" in probe["matcher"]
    for stats in probe["options"].values():
        assert stats["negatives_per_example"] > 0 and stats["negative_response"]["same_dialogue"] == 0.0
    assert json.loads((root / "reports/probes/negative_options.json").read_text()) == probe


def test_score_pools_rejects_misaligned_groups(tmp_path):
    root = write_prepared(tmp_path)
    prepared = pq.read_table(root / "data/prepared/train.parquet")
    ck = tmp_path / "ck"
    ck.mkdir()
    cfg = MatcherConfig()
    platts = {k: Platt(1.0, 0.0) for k in ("minilm", "minilm_zeroshot", "bm25")}
    (ck / "calibration.json").write_text(json.dumps(matching.calibration_record(cfg, platts)))
    with pytest.raises(InputError, match="rows"):
        matching.score_pools("bm25", ck, root / "data/prepared/train.parquet", groups_of(prepared).slice(1))
    with pytest.raises(InputError, match="calibration"):
        matching.score_pools("bm25", tmp_path, root / "data/prepared/train.parquet", groups_of(prepared))
    table = matching.score_pools("bm25", ck, root / "data/prepared/train.parquet", groups_of(prepared))
    assert table.schema.equals(GROUPS)

