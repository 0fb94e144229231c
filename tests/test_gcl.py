"""Group-wise contrastive learning (pipeline/contrastive/gcl.py): losses, group selection, ablations,
the objective and the cached reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from pipeline.contrastive.gcl import (
    GCLConfig,
    GroupContrastive,
    anneal_weight,
    bm25_probability,
    code_terms,
    group_pairs,
    matching_score,
    pair_batch,
    paper_terms,
    reference_log_probs,
    score_pairs,
    select_group,
    select_groups,
    valid_subset,
)
from pipeline.dataset import DataConfig, Vocab, load_split
from pipeline.io import InputError
from pipeline.models import ModelContext, build_model, model_params
from pipeline.models.layers import load_embedding_matrix
from pipeline.schema import GROUPS, REFERENCE_SCORES, SCORED_GROUPS
from tests.model_inputs import build_tiny, tiny_params, write_model_inputs

torch.set_num_threads(1)
LN2, LN3 = math.log(2), math.log(3)  # σ(ln 3) = 0.75


# -- losses, by hand ---------------------------------------------------------------------
def terms(fn, d, s, positive=None):
    d, s = torch.tensor(d, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    if positive is None:
        return fn(d, s).tolist()
    return fn(d, s, torch.tensor(positive)).tolist()


def test_paper_terms_hand_computed():
    # D = 0, σ = 1/2: positive s=1: −ln(1·½) = ln 2; s=0.5: −ln(0.25) = 1.3863;
    # negative s=−1: −ln(1 − ½) = ln 2; s=−0.5: −ln(0.75) = 0.2877; s=0: −ln 1 = 0
    got = terms(paper_terms, [0.0] * 5, [1.0, 0.5, -1.0, -0.5, 0.0], [True, True, False, False, False])
    assert got == pytest.approx([LN2, -math.log(0.25), LN2, -math.log(0.75), 0.0])
    # D = ln 3, σ = 0.75: positive s=0.5: −ln(0.375) = 0.9808; negative s=−0.5: −ln(1 − 0.375) = 0.4700;
    # negative s=−1: −ln(0.25) = 1.3863
    got = terms(paper_terms, [LN3] * 3, [0.5, -0.5, -1.0], [True, False, False])
    assert got == pytest.approx([0.980829, 0.470004, 1.386294], abs=1e-6)


def test_code_terms_hand_computed():
    # ℓ(s, D) = −ln(½(1 − s) + s σ(D)), σ(ln 3) = 0.75
    got = terms(code_terms, [LN3] * 5, [1.0, -1.0, 0.0, 0.5, -0.5])
    assert got == pytest.approx([-math.log(0.75), -math.log(0.25), LN2, -math.log(0.25 + 0.375),
                                 -math.log(0.75 - 0.375)], abs=1e-6)
    # at D = 0 every s gives ln 2
    assert terms(code_terms, [0.0] * 3, [1.0, 0.3, -0.7]) == pytest.approx([LN2] * 3)


def test_code_equals_paper_at_s_plus_minus_one_and_is_stable():
    d = torch.linspace(-60, 60, 13, dtype=torch.float64, requires_grad=True)
    ones = torch.ones_like(d)
    pos = paper_terms(d, ones, torch.ones_like(d, dtype=torch.bool))
    neg = paper_terms(d, -ones, torch.zeros_like(d, dtype=torch.bool))
    torch.testing.assert_close(pos, code_terms(d, ones))
    torch.testing.assert_close(neg, code_terms(d, -ones))
    assert neg[-1].item() == pytest.approx(60.0, abs=1e-6)  # −ln(1 − σ(60)) ≈ 60, no inf
    (pos.sum() + neg.sum()).backward()
    assert torch.isfinite(d.grad).all()


def test_anneal_weight():
    assert anneal_weight(3500) == pytest.approx(0.5)
    assert anneal_weight(0) == pytest.approx((math.tanh(-3.5) + 1) / 2)
    assert anneal_weight(7000) == pytest.approx((math.tanh(3.5) + 1) / 2)


# -- group selection ---------------------------------------------------------------------
def test_matching_score_and_bm25_probability():
    assert matching_score([0.0, 0.25, 0.5, 0.9, 1.0]).tolist() == pytest.approx([-1, -0.5, 0, 0.8, 1])
    assert bm25_probability(np.array([4.0, 2.0, 0.0])).tolist() == [1.0, 0.5, 0.0]
    assert bm25_probability(np.array([3.0, 3.0])).tolist() == [0.5, 0.5]


def test_select_group_top_and_bottom_k_per_side():
    row = 7
    cands = np.array([10, 11, 12, 13, 14])
    qr = np.array([0.9, 0.1, 0.6, 0.6, 0.3])  # best 10, 12 (tie with 13: earlier wins); worst 11, 14
    qc = np.array([0.2, 0.8, 0.5, 0.95, 0.05])  # best 13, 11; worst 14, 10
    g = select_group(row, cands, qr, qc, k=2)
    assert list(zip(g.positive_context_rows, g.positive_response_rows, g.positive_sides, strict=True)) == [
        (7, 7, "original"), (7, 10, "response"), (7, 12, "response"), (13, 7, "context"), (11, 7, "context")]
    assert g.positive_scores == pytest.approx([1.0, 0.8, 0.2, 0.9, 0.6])
    assert list(zip(g.negative_context_rows, g.negative_response_rows, g.negative_sides, strict=True)) == [
        (7, 11, "response"), (7, 14, "response"), (14, 7, "context"), (10, 7, "context")]
    assert g.negative_scores == pytest.approx([-0.8, -0.4, -0.9, -0.6])
    assert len(g.positive_scores) == 2 * 2 + 1 and len(g.negative_scores) == 2 * 2


def test_select_group_small_and_empty_pools():
    g = select_group(0, np.array([5, 6, 7]), np.array([0.1, 0.9, 0.5]), np.array([0.3, 0.2, 0.1]), k=3)
    assert g.positive_response_rows == [0, 6, 7, 0, 0] and g.positive_context_rows == [0, 0, 0, 5, 6]
    assert g.negative_response_rows == [5, 0] and g.negative_context_rows == [0, 7]  # 3 = 2 best + 1 worst
    e = select_group(3, np.array([], dtype=np.int64), np.array([]), np.array([]), k=3)
    assert (e.positive_context_rows, e.positive_scores, e.negative_scores) == ([3], [1.0], [])
    with pytest.raises(ValueError, match="scores"):
        select_group(0, np.array([1, 2]), np.array([0.5]), np.array([0.5, 0.5]), k=1)


def groups_table(n: int) -> pa.Table:
    """Pools for n rows: row i's candidates are the next 6 rows; row 1 has an empty pool."""
    rng = np.random.default_rng(0)
    cands = [[(i + j) % n for j in range(1, 7)] if i != 1 else [] for i in range(n)]
    return pa.Table.from_pydict({
        "example_id": [f"e{i}" for i in range(n)],
        "candidate_rows": cands,
        "bm25_scores": [sorted(rng.uniform(0, 5, len(c)).tolist(), reverse=True) for c in cands],
        "is_top": [[j < 3 for j in range(len(c))] for c in cands],
        "msn_response_side": [rng.uniform(0, 1, len(c)).tolist() for c in cands],
        "msn_context_side": [rng.uniform(0, 1, len(c)).tolist() for c in cands],
    }, schema=GROUPS)


def test_select_groups_msn_bm25_random():
    t = groups_table(10)
    msn = select_groups(t, k=2, selection="msn")
    assert msn.schema == SCORED_GROUPS and msn.num_rows == 10
    r0 = msn.slice(0, 1).to_pylist()[0]
    assert r0["positive_context_rows"][0] == r0["positive_response_rows"][0] == 0 and r0["positive_scores"][0] == 1
    assert len(r0["positive_scores"]) == 5 and len(r0["negative_scores"]) == 4
    assert msn.column("negative_scores")[1].as_py() == []  # empty pool: the original pair alone

    bm25 = select_groups(t, k=2, selection="bm25").slice(0, 1).to_pylist()[0]
    # the pool is sorted by BM25: best = first two, worst = last two; the same on both sides
    assert bm25["positive_response_rows"][1:3] == [1, 2] and bm25["positive_context_rows"][3:] == [1, 2]
    assert bm25["positive_scores"][1] == 1.0 and bm25["negative_scores"][0] == -1.0
    assert bm25["negative_response_rows"][:2] == [6, 5]

    rnd = select_groups(t, k=2, selection="random", seed=3)
    assert rnd.equals(select_groups(t, k=2, selection="random", seed=3))  # seeded
    r = rnd.slice(0, 1).to_pylist()[0]
    assert r["positive_scores"] == [1.0] and r["negative_scores"] == [-1.0] * 4
    assert 0 not in r["negative_response_rows"][:2] and 1 not in r["negative_response_rows"][:2]  # not self/empty

    with pytest.raises(InputError, match="MSN probabilities"):
        select_groups(t.set_column(4, "msn_response_side", pa.array([None] * 10, pa.list_(pa.float32()))), k=2)


# -- ablations ---------------------------------------------------------------------------
def stored_group() -> tuple[dict, dict]:
    g = select_group(7, np.array([10, 11, 12, 13, 14]), np.array([0.9, 0.1, 0.6, 0.6, 0.3]),
                     np.array([0.2, 0.8, 0.5, 0.95, 0.05]), k=2)
    ref = {"positive_log_probs": [-1.0] * 5, "negative_log_probs": [-2.0] * 4}
    return g.__dict__, ref


def summary(cfg: GCLConfig) -> tuple[list, list]:
    pos, neg = group_pairs(*stored_group(), cfg)
    return [(p.context_row, p.response_row, round(p.s, 3)) for p in pos], \
        [(p.context_row, p.response_row, round(p.s, 3)) for p in neg]


def test_ablation_switches_change_the_groups():
    full_pos, full_neg = summary(GCLConfig(k=2))
    assert full_pos == [(7, 7, 1.0), (7, 10, 0.8), (7, 12, 0.2), (13, 7, 0.9), (11, 7, 0.6)]
    assert full_neg == [(7, 11, -0.8), (7, 14, -0.4), (14, 7, -0.9), (10, 7, -0.6)]
    assert summary(GCLConfig(k=1)) == ([(7, 7, 1.0), (7, 10, 0.8), (13, 7, 0.9)], [(7, 11, -0.8), (14, 7, -0.9)])
    assert summary(GCLConfig(k=2, context_side=False)) == (full_pos[:3], full_neg[:2])
    assert summary(GCLConfig(k=2, response_side=False)) == ([full_pos[0], *full_pos[3:]], full_neg[2:])
    assert summary(GCLConfig(k=2, positive_groups=False)) == ([(7, 7, 1.0)], full_neg)
    assert summary(GCLConfig(k=2, negative_groups=False)) == (full_pos, [])
    assert summary(GCLConfig(k=2, group_wise=False)) == ([(7, 7, 1.0)], [(14, 7, -0.9)])  # the worst
    pos, neg = summary(GCLConfig(k=2, matching_scores=False))
    assert [s for *_, s in pos] == [1.0] * 5 and [s for *_, s in neg] == [-1.0] * 4
    with pytest.raises(ValueError, match="both"):
        GCLConfig(context_side=False, response_side=False)
    with pytest.raises(InputError, match="unknown"):
        GCLConfig.from_params({"k": 3, "kk": 1})


# -- the objective on a tiny corpus ------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("gcl"))


@pytest.fixture(scope="module")
def train_ds(data_dir):
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    return load_split("train", vocab, DataConfig(), data_dir)


class FakeModel(nn.Module):
    """log p(r | c) = θ + f(pair) with f known: the tests set the reference so D is exact."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(()))
        self.calls = 0

    @staticmethod
    def f(batch) -> torch.Tensor:
        return -0.01 * (batch.query * batch.query_mask).sum(1).float() - 0.1 * batch.response_mask.sum(1).float()

    def forward(self, batch, method="loss", **ctx):
        if method == "sequence_log_prob":
            self.calls += 1
            return self.theta + self.f(batch)
        return {"loss": self.theta * 0 + 2.0}


def hand_groups(n: int) -> pa.Table:
    """Every row only its original pair, except row 0: positives s = 1, 0.5 and negatives
    s = −1 (response side) and −0.5 (context side)."""
    rows = []
    for i in range(n):
        r = {"example_id": f"x{i}", "positive_context_rows": [i], "positive_response_rows": [i],
             "positive_scores": [1.0], "positive_sides": ["original"], "negative_context_rows": [],
             "negative_response_rows": [], "negative_scores": [], "negative_sides": []}
        if i == 0:
            r.update(positive_context_rows=[0, 0], positive_response_rows=[0, 5], positive_scores=[1.0, 0.5],
                     positive_sides=["original", "response"], negative_context_rows=[0, 9],
                     negative_response_rows=[7, 0], negative_scores=[-1.0, -0.5],
                     negative_sides=["response", "context"])
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=SCORED_GROUPS)


def reference_for(groups: pa.Table, ds, d: float) -> pa.Table:
    """Reference log-probs that make D = d for every pair under FakeModel (θ = 0)."""
    out = {"example_id": groups.column("example_id").to_pylist(), "positive_log_probs": [], "negative_log_probs": []}
    for g in groups.to_pylist():
        for kind in ("positive", "negative"):
            c, r = g[f"{kind}_context_rows"], g[f"{kind}_response_rows"]
            vals = FakeModel.f(pair_batch(ds, c, r)).tolist() if c else []
            out[f"{kind}_log_probs"].append([v - d for v in vals])
    return pa.Table.from_pydict(out, schema=REFERENCE_SCORES)


def objective(train_ds, d: float, **cfg) -> GroupContrastive:
    groups = hand_groups(len(train_ds))
    return GroupContrastive(GCLConfig(k=3, **cfg), groups, reference_for(groups, train_ds, d), train_ds)


def test_objective_eq4_mixed_group_by_hand(train_ds):
    model = FakeModel()
    obj = objective(train_ds, LN3)
    out = obj(model, train_ds.collate([0]))
    # positives: (−ln .75 − ln .75·... ) -> mean(0.287682, 0.980829); negatives: mean(1.386294, 0.470004)
    assert out["loss"].item() == pytest.approx((0.287682 + 0.980829) / 2 + (1.386294 + 0.470004) / 2, abs=1e-5)
    assert model.calls == 1 and int(out["n_pairs"]) == 4
    out = obj(model, train_ds.collate([0, 1]))  # row 1: only its original pair, −ln σ(ln 3)
    assert out["loss"].item() == pytest.approx((1.562405 + 0.287682) / 2, abs=1e-5)
    assert model.calls == 2  # ONE sequence_log_prob call per step, whatever the group sizes
    out["loss"].backward()
    assert model.theta.grad is not None and model.theta.grad.item() != 0


def test_objective_code_loss_and_d_zero(train_ds):
    # D = 0: paper: pos mean(ln 2, −ln .25) + neg mean(ln 2, −ln .75); code: ln 2 + ln 2
    paper = objective(train_ds, 0.0)(FakeModel(), train_ds.collate([0]))["loss"].item()
    code = objective(train_ds, 0.0, loss="code")(FakeModel(), train_ds.collate([0]))["loss"].item()
    assert paper == pytest.approx((LN2 - math.log(0.25)) / 2 + (LN2 - math.log(0.75)) / 2, abs=1e-6)
    assert code == pytest.approx(2 * LN2, abs=1e-6)


def test_objective_drops_wrong_sign_pairs_under_eq4(train_ds):
    groups = hand_groups(len(train_ds))
    g = groups.to_pylist()
    g[0]["positive_scores"] = [1.0, -0.2]  # a "best" candidate MSN still rates q < 0.5
    groups = pa.Table.from_pylist(g, schema=SCORED_GROUPS)
    obj = GroupContrastive(GCLConfig(k=3), groups, reference_for(groups, train_ds, LN3), train_ds)
    out = obj(FakeModel(), train_ds.collate([0]))
    assert out["loss"].item() == pytest.approx(0.287682 + (1.386294 + 0.470004) / 2, abs=1e-5)
    assert int(out["n_pairs"]) == 3


def test_objective_mle_mixing_and_warmup(train_ds):
    model = FakeModel()
    obj = objective(train_ds, LN3, anneal=True, anneal_center=100, anneal_width=10)
    out = obj(model, train_ds.collate([0]), step=100)  # w = 0.5: ½ NLL (2.0) + ½ CL
    assert out["loss"].item() == pytest.approx(0.5 * 2.0 + 0.5 * 1.562405, abs=1e-5)
    warm = objective(train_ds, LN3, mle_warmup_steps=5)
    calls = model.calls
    assert warm(model, train_ds.collate([0]), step=4)["loss"].item() == 2.0 and model.calls == calls
    assert warm(model, train_ds.collate([0]), step=5)["loss"].item() == pytest.approx(1.562405, abs=1e-5)


def test_draws_sampling_shares_one_candidate_per_draw(train_ds):
    groups = select_groups(groups_table(len(train_ds)), k=2)
    ref = reference_log_probs(FakeModel(), train_ds, groups)
    obj = GroupContrastive(GCLConfig(k=2, sampling="draws", draws=5, loss="code"), groups, ref, train_ds)
    rows = [0, 2, 3, 4]
    pairs, owner, weight = obj.step_pairs(rows, step=11)
    assert sum(weight) == pytest.approx(1.0)
    assert [p.side for p in pairs[:4]] == ["original"] * 4 and owner[:4] == [0, 1, 2, 3]
    draws = [pairs[i : i + 4] for i in range(4, len(pairs), 4)]
    assert len(draws) == 5
    for d in draws:  # one side and one position for the whole batch
        assert len({p.side for p in d}) == 1
        pos = [[q.response_row if p.side == "response" else q.context_row for q in obj.groups[r][0] + obj.groups[r][1]
                if q.side == p.side].index(p.response_row if p.side == "response" else p.context_row)
               for r, p in zip(rows, d, strict=True)]
        assert len(set(pos)) == 1
    again, _, _ = obj.step_pairs(rows, step=11)
    assert [(p.context_row, p.response_row) for p in again] == [(p.context_row, p.response_row) for p in pairs]


def test_objective_rejects_misaligned_reference(train_ds):
    groups = hand_groups(len(train_ds))
    ref = reference_for(groups, train_ds, 0.0)
    with pytest.raises(InputError, match="aligned"):
        GroupContrastive(GCLConfig(), groups, ref.set_column(0, "example_id", pa.array(["?"] * ref.num_rows)),
                         train_ds)
    with pytest.raises(InputError, match="training examples"):
        GroupContrastive(GCLConfig(), groups.slice(1), ref.slice(1), train_ds)


def test_pair_batch_takes_context_and_response_rows(train_ds):
    b = pair_batch(train_ds, [3, 3], [5, 3])
    assert torch.equal(b.query[0, : len(train_ds[3].query)], torch.as_tensor(train_ds[3].query))
    assert b.response[0, : len(train_ds[5].response)].tolist() == train_ds[5].response.tolist()
    assert b.response[1, : len(train_ds[3].response)].tolist() == train_ds[3].response.tolist()


# -- the cached reference equals a live one ----------------------------------------------
def test_reference_cache_equals_live_reference(data_dir, train_ds):
    vocab = train_ds.vocab
    emb = load_embedding_matrix(data_dir / "embeddings" / "vectors.parquet", vocab.itos)
    torch.manual_seed(0)
    model = build_model("seq2seq", model_params(tiny_params(), "seq2seq"), ModelContext.from_vocab(vocab, emb))
    groups = select_groups(groups_table(len(train_ds)), k=2)
    cached = reference_log_probs(model, train_ds, groups, batch_size=7)
    assert cached.schema == REFERENCE_SCORES
    assert not model.training  # the reference runs in eval mode
    other = reference_log_probs(model, train_ds, groups, batch_size=64)  # batching does not matter
    for kind in ("positive", "negative"):
        np.testing.assert_allclose(np.concatenate(cached.column(f"{kind}_log_probs").to_pylist()),
                                   np.concatenate(other.column(f"{kind}_log_probs").to_pylist()), atol=1e-5)
    g, c = groups.to_pylist(), cached.to_pylist()
    for row in (0, 1, 5):
        for kind in ("positive", "negative"):
            if not g[row][f"{kind}_context_rows"]:
                continue
            live = model(pair_batch(train_ds, g[row][f"{kind}_context_rows"], g[row][f"{kind}_response_rows"]),
                         method="sequence_log_prob")
            np.testing.assert_allclose(c[row][f"{kind}_log_probs"], live.detach().numpy(), rtol=1e-5, atol=1e-4)

    # a target initialised from the reference has D = 0 on every pair, even in train mode:
    # the contrastive pass runs without dropout, as the reference was scored
    model.params["dropout"] = 0.5
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    model.train()
    obj = GroupContrastive(GCLConfig(k=2), groups, cached, train_ds)
    out = obj(model, train_ds.collate([0, 2, 3]))
    assert abs(out["d_positive"].item()) < 1e-4
    assert model.training  # and the model is back in train mode
    out["loss"].backward()  # gradients flow through the eval-mode pass
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # with dropout in the scoring pass (the old behaviour) D is off zero
    torch.manual_seed(1)
    biased = GroupContrastive(GCLConfig(k=2, score_dropout=True), groups, cached, train_ds)
    assert abs(biased(model, train_ds.collate([0, 2, 3]))["d_positive"].item()) > 1e-2
    # the validation contrastive loss: every valid group pair, eval mode; D = 0 -> Eq. 4 at D = 0
    obj = GroupContrastive(GCLConfig(k=2), groups, cached, train_ds, valid=(groups, cached, train_ds), valid_batch=4)
    val = obj.validate(model, "cpu", "fp32")
    assert model.training and abs(val["d_positive"]) < 1e-4
    expect = []
    for pos, neg in obj.groups:
        pos = [p for p in pos if p.s > 0]
        neg = [p for p in neg if p.s <= 0]
        t = sum(-math.log(p.s) + LN2 for p in pos) / len(pos)
        t += sum(-math.log(1 + p.s / 2) for p in neg) / len(neg) if neg else 0.0
        expect.append(t)
    assert val["cl"] == pytest.approx(float(np.mean(expect)), abs=1e-4)
    assert GroupContrastive(GCLConfig(k=2), groups, cached, train_ds).validate(model, "cpu") == {}


def test_separation_of_positives_and_negatives_by_hand(train_ds):
    """separation(): D per kind and side, and the ROC AUC of D, positives against negatives."""
    groups = hand_groups(len(train_ds))
    ref = reference_for(groups, train_ds, 0.0).to_pylist()
    # D = +1 for every original pair; row 0: response-side positive -2, negatives -1 (response), +2 (context)
    for r in ref:
        r["positive_log_probs"] = [v - (1.0 if j == 0 else -2.0) for j, v in enumerate(r["positive_log_probs"])]
        r["negative_log_probs"] = [v - d for v, d in zip(r["negative_log_probs"], (-1.0, 2.0), strict=False)]
    ref = pa.Table.from_pylist(ref, schema=REFERENCE_SCORES)
    n = len(train_ds)
    obj = GroupContrastive(GCLConfig(k=3), groups, ref, train_ds, valid=(groups, ref, train_ds), valid_batch=3)
    sep = obj.separation(FakeModel(), "cpu", "fp32")
    assert sep["positive_original"] == pytest.approx({"pairs": n, "mean_d": 1.0, "sd_d": 0.0, "share_d_gt_0": 1.0}, abs=1e-5)
    assert sep["positive_response"] == pytest.approx({"pairs": 1, "mean_d": -2.0, "sd_d": 0.0, "share_d_gt_0": 0.0}, abs=1e-5)
    assert sep["negative_response"]["mean_d"] == pytest.approx(-1.0)
    assert sep["negative_context"]["share_d_gt_0"] == 1.0
    # the negative at -1 is below n of the n + 1 positives, the one at +2 above all of them
    assert sep["auc"] == pytest.approx(n / (2 * (n + 1)))
    assert sep["cl"] == pytest.approx(obj.validate(FakeModel(), "cpu", "fp32")["cl"])
    with pytest.raises(ValueError, match="valid groups"):
        GroupContrastive(GCLConfig(k=3), groups, ref, train_ds).separation(FakeModel(), "cpu")


def test_objective_eq4_plus_mle_anchor_by_hand(train_ds):
    # Eq. 4 + λ NLL: the fake model's NLL is 2.0 and Eq. 4 on row 0 at D = ln 3 is 1.562405
    out = objective(train_ds, LN3, mle_weight=0.5)(FakeModel(), train_ds.collate([0]))
    assert out["loss"].item() == pytest.approx(1.562405 + 0.5 * 2.0, abs=1e-5)
    assert out["mle_loss"].item() == 2.0 and out["cl_loss"].item() == pytest.approx(1.562405, abs=1e-5)
    with pytest.raises(ValueError, match="mle_weight"):
        GCLConfig(mle_weight=-1)


def test_cl_weight_zero_is_mle_fine_tuning_alone(train_ds):
    model = FakeModel()
    calls = model.calls
    out = objective(train_ds, LN3, mle_weight=0.5, cl_weight=0.0)(model, train_ds.collate([0]))
    assert out["loss"].item() == 0.5 * 2.0 and "cl_loss" not in out
    assert model.calls == calls  # no group pair scored (calls counts sequence_log_prob)
    half = objective(train_ds, LN3, mle_weight=0.5, cl_weight=0.5)(FakeModel(), train_ds.collate([0]))
    assert half["loss"].item() == pytest.approx(0.5 * 1.562405 + 0.5 * 2.0, abs=1e-5)
    with pytest.raises(ValueError, match="cl_weight 0 .* needs gcl.mle_weight > 0"):
        GCLConfig(cl_weight=0.0, mle_weight=0.0)
    with pytest.raises(ValueError, match="cl_weight"):
        GCLConfig(cl_weight=-1.0)


# -- the stages end to end on the tiny corpus --------------------------------------------
def fake_groups(prepared: pa.Table) -> pa.Table:
    """data/groups stand-in: 6 candidates per row (the next rows), empty for opening turns."""
    n = prepared.num_rows
    opening = [q == "__silence__" for q in prepared.column("query").to_pylist()]
    cands = [[] if opening[i] else [(i + j) % n for j in range(1, 7)] for i in range(n)]
    return pa.Table.from_pydict({
        "example_id": prepared.column("example_id").to_pylist(),
        "candidate_rows": cands,
        "bm25_scores": [[6.0 - j for j in range(len(c))] for c in cands],
        "is_top": [[j < 3 for j in range(len(c))] for c in cands],
        "msn_response_side": [None] * n,
        "msn_context_side": [None] * n,
    }, schema=GROUPS)


@pytest.mark.slow
def test_gcl_stages_end_to_end(tmp_path, data_dir, monkeypatch, caplog):
    import logging
    import shutil

    import pyarrow.parquet as pq
    import yaml

    from pipeline.schema import GENERATIONS
    from pipeline.train import load_checkpoint
    from stages import generate, msn, reference_scores, score_groups, select_groups, train, train_gcl

    shutil.copytree(data_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_NO_PROGRESS", "1")
    prepared = pq.read_table("data/prepared/train.parquet")
    (tmp_path / "data/groups").mkdir()
    pq.write_table(fake_groups(prepared), "data/groups/train.parquet")
    pq.write_table(fake_groups(pq.read_table("data/prepared/valid.parquet")), "data/groups/valid.parquet")
    params = tiny_params(
        train={"epochs": 1},
        msn={"max_utterances": 3, "max_words": 16, "dim": 8, "hops": 3, "selector_hidden": 2, "alpha": 0.5,
             "gamma": 0.3, "bilinear": "full", "channels": [2, 3, 4], "match_dim": 6, "gru_hidden": 5,
             "dropout": 0.0, "epochs": 1, "batch_size": 16, "lr": 0.003, "seed": 1, "eval_candidates": 10},
        score_groups={"max_pairs": 128, "scorer": "msn"},
        select_groups={"selection": "msn", "seed": 1},
        reference_scores={"batch_size": 64},
        gcl={"k": 2},
        seq2seq_history={"model": "seq2seq", "context": "history", "max_context_tokens": 30},
        seq2seq_history_gcl={"train": {"max_steps": 3, "batch_size": 8, "validate_every": 0, "criterion": "cl_nll"}},
        eq4_alone={"gcl": {"mle_weight": 0.0}, "train": {"max_steps": 2}},
        bad_variant={"gcl": {"k": 0}},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    train.main(["seq2seq_history", "--seed", "1"])  # dvc stage train_history@seq2seq_history-1
    reference = load_checkpoint(tmp_path / "checkpoints/seq2seq_history/seed1/best.pt")
    assert reference["model_name"] == "seq2seq" and reference["model_params"]["context"] == "history"
    metrics = msn.main()
    assert set(metrics) >= {"R10@1", "R10@2", "R10@5", "MRR"}
    assert (tmp_path / "reports/msn.json").exists()
    load_checkpoint(tmp_path / "checkpoints/msn/best.pt")  # weights_only
    score_groups.main()
    scored = pq.read_table("data/msn_scores/train.parquet")
    assert scored.schema.equals(GROUPS)
    q = [x for row in scored.column("msn_context_side").to_pylist() for x in row]
    assert q and all(0 < x < 1 for x in q)
    select_groups.main()
    pool_stats = json.loads((tmp_path / "reports/scored_groups.json").read_text())
    for side in ("negative_response", "negative_context"):
        assert 0 < pool_stats[side]["top3_responses_share"] <= 1 and 0 < pool_stats[side]["top10_contexts_share"] <= 1
    first = (tmp_path / "data/scored_groups/train.parquet").read_bytes()
    select_groups.main()
    assert (tmp_path / "data/scored_groups/train.parquet").read_bytes() == first  # deterministic bytes
    reference_scores.main(["seq2seq_history", "--seed", "1"])
    for split in ("train", "valid"):
        ref = pq.read_table(f"data/reference_scores/seq2seq_history/seed1/{split}.parquet")
        assert ref.schema.equals(REFERENCE_SCORES)
        assert ref.num_rows == pq.read_table(f"data/prepared/{split}.parquet").num_rows

    with caplog.at_level(logging.INFO):
        summary = train_gcl.main(["seq2seq_history", "--seed", "1"])
    assert summary["steps"] == 3 and "initialised from checkpoints/seq2seq_history/seed1/best.pt" in caplog.text
    assert summary["criterion"] == "cl_nll" and summary["best_val_criterion"] > summary["best_val_nll"] * 0.5
    # a fine-tune validates its starting point first: best.pt is never worse than the reference
    steps = [int(line.split("\t")[0]) for line in
             (tmp_path / "dvclive/seq2seq_history_gcl/seed1/plots/metrics/val/cl.tsv").read_text().splitlines()[1:]]
    assert steps[0] == 0 and steps[-1] == 3
    reference_weights = reference["model"]
    gcl = load_checkpoint("checkpoints/seq2seq_history_gcl/seed1/last.pt")
    assert gcl["model_name"] == "seq2seq" and gcl["run"] == "seq2seq_history_gcl"
    assert gcl["model_params"]["context"] == "history"  # the target reads the data as its reference did
    assert any(not torch.equal(gcl["model"][k], v) for k, v in reference_weights.items())
    assert train_gcl.main(["seq2seq_history", "--seed", "1"])["skipped"]  # same inputs: nothing to do
    # a variant: its gcl/train keys over seq2seq_history_gcl's (batch size and criterion stay)
    variant = train_gcl.main(["seq2seq_history", "--seed", "1", "--run", "eq4_alone"])
    assert variant["steps"] == 2 and variant["criterion"] == "cl_nll" and not variant["skipped"]
    assert load_checkpoint("checkpoints/eq4_alone/seed1/best.pt")["run"] == "eq4_alone"
    with pytest.raises(InputError, match="no_such_run: no such section"):
        train_gcl.main(["seq2seq_history", "--seed", "1", "--run", "no_such_run"])
    with pytest.raises(InputError, match="bad_variant.gcl"):
        train_gcl.main(["seq2seq_history", "--seed", "1", "--run", "bad_variant"])
    # seed K's target pairs with seed K's reference only (none trained for seed 2 here)
    with pytest.raises(InputError, match="checkpoints/seq2seq_history/seed2/best.pt: missing"):
        train_gcl.main(["seq2seq_history", "--seed", "2"])
    generate.main(["seq2seq_history_gcl", "--seed", "1"])
    assert pq.read_table("reports/generations/seq2seq_history_gcl/seed1.parquet").schema.equals(GENERATIONS)
    generate.main(["seq2seq_history_gcl", "--seed", "1", "--checkpoint", "last"])  # stage generate_last
    assert pq.read_table("reports/generations/seq2seq_history_gcl_last/seed1.parquet").num_rows == \
        pq.read_table("data/prepared/test.parquet").num_rows


@pytest.mark.parametrize("name", ["seq2seq", "gpmn", "postks", "pednet", "hred", "hran", "transformer"])
def test_shared_context_encoding_equals_per_pair_scoring(name, data_dir, train_ds):
    """score_pairs encodes each distinct context once (an example's response-side pairs share
    it), in blocks of contexts, and decodes length-sorted chunks: log p and its gradients
    equal scoring every pair from scratch in one padded batch, in the pairs' own order."""
    history = {"context": "history", "max_context_tokens": 60} if name in ("hred", "hran", "transformer") else {}
    params = model_params(tiny_params(model=history, pednet={"k": 2}, gpmn={"idf": "persona"},
                                      transformer={"heads": 2, "ff_dim": 32, "layers": 2}), name)
    model, ds = build_tiny(name, params, data_dir, train_ds.vocab)
    groups = select_groups(groups_table(len(ds)), k=2)
    obj = GroupContrastive(GCLConfig(k=2), groups, reference_log_probs(model, ds, groups), ds)
    pairs, _, _ = obj.step_pairs([0, 2, 3, 5], 0)
    ctx, resp = [p.context_row for p in pairs], [p.response_row for p in pairs]
    assert len(set(ctx)) < len(ctx)  # some contexts are shared
    model.eval()
    grads, values = [], []
    for kwargs in ({"share": False, "chunk": len(pairs)}, {"chunk": 3, "block": 2}):  # one batch | shared, chunked
        model.zero_grad()
        lp = score_pairs(model, ds, ctx, resp, "cpu", **kwargs)
        lp.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        values.append(lp.detach())
    whole = model(pair_batch(ds, ctx, resp), method="sequence_log_prob").detach()
    torch.testing.assert_close(values[0], whole.float(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(values[1].numpy(), values[0].numpy(), rtol=1e-5, atol=1e-4)
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reference_scores_batched_equal_one_by_one(data_dir, train_ds):
    # the reference stage's batched, shared-context scoring against every pair alone
    vocab = train_ds.vocab
    emb = load_embedding_matrix(data_dir / "embeddings" / "vectors.parquet", vocab.itos)
    torch.manual_seed(0)
    model = build_model("seq2seq", model_params(tiny_params(), "seq2seq"), ModelContext.from_vocab(vocab, emb))
    groups = select_groups(groups_table(len(train_ds)), k=2)
    table = reference_log_probs(model, train_ds, groups, batch_size=5)
    row = 3
    g = groups.slice(row, 1).to_pylist()[0]
    model.eval()
    for kind in ("positive", "negative"):
        for c, r, got in zip(g[f"{kind}_context_rows"], g[f"{kind}_response_rows"],
                             table.column(f"{kind}_log_probs")[row].as_py(), strict=True):
            with torch.no_grad():
                alone = float(model(pair_batch(train_ds, [c], [r]), method="sequence_log_prob")[0])
            assert got == pytest.approx(alone, rel=1e-5, abs=1e-4)


def test_valid_subset_is_seeded_sorted_and_all_when_unset():
    a = valid_subset(100, 30, seed=1)
    assert len(a) == 30 and len(set(a.tolist())) == 30 and (np.diff(a) > 0).all()
    assert (a == valid_subset(100, 30, seed=1)).all() and not (a == valid_subset(100, 30, seed=2)).all()
    assert (valid_subset(100, 0, seed=1) == np.arange(100)).all()
    assert (valid_subset(10, 30, seed=1) == np.arange(10)).all()


def test_top_share_counts_the_most_frequent_values():
    from stages.select_groups import _top_share

    values = ["hi"] * 5 + ["how are you"] * 3 + ["a", "b"]
    assert _top_share(values, 1) == 0.5 and _top_share(values, 2) == 0.8 and _top_share(values, 10) == 1.0
    assert _top_share([], 3) == 0.0
