"""MSN (pipeline/models/msn.py) and its training/scoring helpers (pipeline/contrastive/msn.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.contrastive.msn import (
    MSNData,
    MSNTrainConfig,
    context_utterances,
    evaluate_msn,
    load_msn,
    make_batch,
    random_negatives,
    ranking_metrics,
    save_msn,
    score_pools,
    train_msn,
    valid_candidates,
)
from pipeline.models.msn import MSN, MSNConfig, cnn_output_size, context_tensor, response_tensor
from pipeline.schema import GROUPS, SILENCE

torch.set_num_threads(1)


def tiny_config(**kw) -> MSNConfig:
    base = dict(vocab_size=40, embedding_dim=12, dim=8, max_utterances=3, max_words=16, hops=3,
                selector_hidden=2, channels=(2, 3, 4), match_dim=6, gru_hidden=5, dropout=0.0)
    return MSNConfig(**{**base, **kw})


def random_inputs(b: int, cfg: MSNConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    utt = torch.randint(7, cfg.vocab_size, (b, cfg.max_utterances, cfg.max_words), generator=g)
    utt[:, :, 6:] = 0  # utterances of 6 words
    utt[0, :2] = 0  # example 0 has one utterance only
    resp = torch.randint(7, cfg.vocab_size, (b, cfg.max_words), generator=g)
    resp[:, 5:] = 0
    return utt, resp


def test_forward_shapes_and_probability_range():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MSN(cfg).eval()
    utt, resp = random_inputs(4, cfg)
    logits = model(utt, resp)
    assert logits.shape == (4,)
    q = model.probability(utt, resp)
    assert bool(((q > 0) & (q < 1)).all())
    ctx = model.encode_context(utt)
    assert ctx["emb"].shape == (4, 3, 16, 8) and ctx["hu"].shape == (4, 3, 16, 8)
    assert ctx["counts"].tolist() == [1, 3, 3, 3]


def test_pairs_by_index_equal_forward():
    """Encoding a context once and matching it with several responses by index gives the
    same logits as running every pair through forward()."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MSN(cfg).eval()
    utt, resp = random_inputs(3, cfg)
    pc, pr = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0])
    by_index = model.pair_logits({"utterances": utt, "responses": resp, "pair_context": pc, "pair_response": pr})
    direct = model(utt[pc], resp[pr])
    torch.testing.assert_close(by_index, direct, rtol=1e-5, atol=1e-5)


def test_padding_utterances_do_not_change_the_score():
    """Left-padding with more empty utterances (bigger N) leaves a short context's
    GRU input unchanged: only the selector's softmax and hop keys see real utterances."""
    torch.manual_seed(0)
    cfg = tiny_config(max_utterances=3, hops=1)
    model = MSN(cfg).eval()
    utt, resp = random_inputs(1, cfg)  # one real utterance at position 2
    cfg5 = tiny_config(max_utterances=5, hops=1)
    model5 = MSN(cfg5).eval()
    model5.load_state_dict(model.state_dict())
    utt5 = torch.zeros(1, 5, 16, dtype=torch.long)
    utt5[:, 2:] = utt
    torch.testing.assert_close(model(utt, resp), model5(utt5, resp), rtol=1e-5, atol=1e-5)


def test_full_and_diagonal_bilinear_differ_only_off_diagonal():
    torch.manual_seed(0)
    cfg = tiny_config()
    full = MSN(cfg).eval()
    diag = MSN(tiny_config(bilinear="diagonal")).eval()
    diag.load_state_dict(full.state_dict())
    utt, resp = random_inputs(2, cfg)
    assert not torch.allclose(full(utt, resp), diag(utt, resp))
    with torch.no_grad():  # zero the off-diagonal entries: both forms agree
        for a in full.bilinear:
            a.copy_(torch.diag(torch.diagonal(a)))
        w = full.word_bilinear
        eye = torch.eye(w.shape[0], dtype=torch.bool).unsqueeze(-1)
        w.copy_(torch.where(eye, w, torch.zeros_like(w)))
    diag.load_state_dict(full.state_dict())
    torch.testing.assert_close(full(utt, resp), diag(utt, resp))


def test_tiny_overfit():
    """8 contexts, each with its response (label 1) and another one (label 0): MSN learns them."""
    torch.manual_seed(0)
    cfg = tiny_config(dim=None, embedding_dim=8, dropout=0.0)
    model = MSN(cfg)
    rng = np.random.default_rng(0)
    contexts = [[rng.integers(7, 40, 5), rng.integers(7, 40, 6)] for _ in range(8)]
    responses = [rng.integers(7, 40, 5) for _ in range(8)]
    data = MSNData(contexts, responses, [str(i) for i in range(8)])
    rows = np.arange(8)
    neg = (rows + 3) % 8
    batch = make_batch(data, rows, np.r_[rows, neg], np.r_[rows, rows], np.arange(16), cfg,
                       label=np.r_[np.ones(8), np.zeros(8)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        out = model.loss(batch)
        first = first if first is not None else float(out["loss"].detach())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    out = model.eval().loss(batch)
    assert out["loss"].item() < 0.1 < first
    assert int(out["correct"]) == 16


def test_config_validation():
    with pytest.raises(ValueError, match="too short"):
        tiny_config(max_words=12)
    with pytest.raises(ValueError, match="bilinear"):
        tiny_config(bilinear="half")
    with pytest.raises(ValueError, match="hops"):
        tiny_config(hops=4)
    assert cnn_output_size(50) == 3  # the paper's 50 x 50 maps -> 3 x 3 (authors: 3*3*64 features)
    assert cnn_output_size(16) == 1


def test_tensors_keep_newest_utterances_left_padded():
    ctx = [[np.array([1, 2]), np.array([3, 4, 5]), np.array([6])]]
    t = context_tensor(ctx, max_utterances=2, max_words=2)
    assert t.tolist() == [[[3, 4], [6, 0]]]
    t = context_tensor([[np.array([9])]], max_utterances=3, max_words=2)
    assert t.tolist() == [[[0, 0], [0, 0], [9, 0]]]
    assert response_tensor([np.array([1, 2, 3])], 2).tolist() == [[1, 2]]


def test_context_utterances():
    assert context_utterances(["a b", "c"], "d e") == ["a b", "c", "d e"]
    assert context_utterances([], SILENCE) == [SILENCE]


def test_ranking_metrics_hand_computed_and_ties_pessimistic():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # rank 1
        [0.5, 0.6, 0.1, 0.1],  # rank 2
        [0.1, 0.2, 0.3, 0.4],  # rank 4
    ])
    m = ranking_metrics(scores)
    assert m["R4@1"] == pytest.approx(1 / 3)
    assert m["R4@2"] == pytest.approx(2 / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)
    assert "R4@5" not in m
    const = ranking_metrics(np.zeros((2, 10)))
    assert const["R10@1"] == 0.0 and const["MRR"] == pytest.approx(0.1)


def test_random_negatives_differ_from_positive_text():
    texts = ["a", "a", "b", "c", "a"]
    negs = random_negatives(texts, np.arange(5), 2, np.random.default_rng(0))
    for row, ns in enumerate(negs):
        assert len(set(ns)) == 2
        assert all(texts[j] != texts[row] for j in ns)


def _tiny_data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    contexts = [[rng.integers(7, 40, 4) for _ in range(1 + i % 3)] for i in range(n)]
    responses = [rng.integers(7, 40, 5) for _ in range(n)]
    return MSNData(contexts, responses, [f"r{i}" for i in range(n)])


def test_score_pools_matches_direct_scoring():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MSN(cfg).eval()
    data = _tiny_data()
    groups = pa.Table.from_pydict({
        "example_id": [f"e{i}" for i in range(6)],
        "candidate_rows": [[1, 2, 5], [0, 3, 4], [], [4, 0], [1, 2], [0, 1]],
        "bm25_scores": [[3.0, 2.0, 0.0], [1.0, 1.0, 0.0], [], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
        "is_top": [[True, True, False], [True, True, False], [], [True, False], [True, False], [True, False]],
        "msn_response_side": [None] * 6,
        "msn_context_side": [None] * 6,
    }, schema=GROUPS)
    out = score_pools(model, data, groups, max_pairs=5)  # chunks split contexts: results must not care
    assert out.schema == GROUPS
    qr, qc = out.column("msn_response_side").to_pylist(), out.column("msn_context_side").to_pylist()
    assert qr[2] == [] and qc[2] == []

    def direct(c, r):
        b = make_batch(data, [c], [r], [0], [0], cfg)
        with torch.no_grad():
            return float(torch.sigmoid(model.pair_logits(b))[0])

    for i, cands in enumerate(groups.column("candidate_rows").to_pylist()):
        for slot, j in enumerate(cands):
            assert qr[i][slot] == pytest.approx(direct(i, j), abs=1e-5)
            assert qc[i][slot] == pytest.approx(direct(j, i), abs=1e-5)


def test_score_pools_rejects_misaligned_groups():
    from pipeline.io import InputError

    model = MSN(tiny_config()).eval()
    groups = pa.Table.from_pydict({"example_id": ["e0"], "candidate_rows": [[0]], "bm25_scores": [[1.0]],
                                   "is_top": [[True]], "msn_response_side": [None], "msn_context_side": [None]},
                                  schema=GROUPS)
    with pytest.raises(InputError, match="rows"):
        score_pools(model, _tiny_data(), groups)


def test_train_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MSN(cfg)
    train, valid = _tiny_data(12, seed=1), _tiny_data(12, seed=2)
    best = train_msn(model, train, valid, MSNTrainConfig(epochs=2, batch_size=4, eval_candidates=4),
                     checkpoint=tmp_path / "best.pt")
    assert set(best) >= {"R4@1", "R4@2", "MRR", "epoch"}
    ck = torch.load(tmp_path / "best.pt", weights_only=True)  # plain types only
    assert ck["metrics"]["epoch"] == best["epoch"]
    loaded = load_msn(tmp_path / "best.pt")  # the best epoch's weights give the best epoch's metrics
    again = evaluate_msn(loaded, valid, valid_candidates(valid, 4, seed=1))
    assert again["R4@1"] == best["R4@1"] and again["MRR"] == pytest.approx(best["MRR"])
    save_msn(model, tmp_path / "again.pt", {})
    assert load_msn(tmp_path / "again.pt").config == model.config
