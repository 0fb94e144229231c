"""PEDNet (CDNet + PDNet) on the tiny fabricated model inputs of tests/model_inputs.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.dataset import Vocab, load_split
from pipeline.decode import generate_rows, greedy
from pipeline.io import InputError
from pipeline.models.layers import MemoryHops
from pipeline.models.pednet import CDNET, PDNET, PEDNet, choose_task
from tests.model_inputs import build_tiny, write_model_inputs

PARAMS = {"hidden": 16, "dropout": 0.0, "k": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("pednet"), k_max=5)


@pytest.fixture(scope="module")
def vocab(data):
    return Vocab.load(data / "prepared" / "vocab.parquet")


def make(data, vocab, split="train", seed=0, **overrides):
    return build_tiny("pednet", {**PARAMS, **overrides}, data, vocab, split, seed)


def test_forward_backward_both_tasks(data, vocab):
    model, ds = make(data, vocab)
    batch = ds.collate(list(range(6)))
    for task, used in ((CDNET, ("memory.proj.weight", "memory.none_memory", "key_linear.weight")),
                       (PDNET, ("encoder.gru.weight_ih_l0", "decoder.cells.0.weight_ih"))):
        model.zero_grad()
        out = model.loss(batch, task=task)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        assert out["n_tokens"] == batch.response_mask.sum()
        out["loss"].backward()
        grads = dict(model.named_parameters())
        for name in used:
            assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, (task, name)
    # PDNet reads neither the memory network nor the specific words.
    assert grads["memory.proj.weight"].grad is None or grads["memory.proj.weight"].grad.abs().sum() == 0


def test_cdnet_loss_weights_nll_and_persona(data, vocab):
    model, ds = make(data, vocab, nll_weight=0.3, persona_weight=0.7)
    model.eval()
    batch = ds.collate(list(range(6)))
    out = model.loss(batch)  # eval: CDNet
    nll = out["nll_sum"] / out["n_tokens"]
    assert float(out["loss"].detach()) == pytest.approx(0.3 * float(nll) + 0.7 * float(out["persona_ce"]), rel=1e-5)
    assert int(out["persona_total"]) == 6


def test_persona_query_ignores_absent_specific_words(data, vocab):
    model, ds = make(data, vocab)
    model.eval()
    batch = ds.collate(list(range(len(ds))))
    none = ~batch.specific_words_mask.any(1)
    assert none.any() and (~none).any()  # the tiny corpus has both kinds
    u = torch.randn(batch.size, 16)
    z = model.persona_query(batch, u)
    assert torch.equal(z[none], u[none])
    assert not torch.allclose(z[~none], u[~none])


def test_loss_falls_overfitting_a_tiny_set(data, vocab):
    model, ds = make(data, vocab)
    batch = ds.collate(list(range(8)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    before = float(model.loss(batch)["nll_sum"])
    model.train()
    for step in range(60):
        opt.zero_grad()
        model.loss(batch, step=step)["loss"].backward()
        opt.step()
    model.eval()
    after = float(model.loss(batch)["nll_sum"])
    assert after < 0.5 * before


def test_cdnet_learns_persona_selection(data, vocab):
    """The memory network fits the optimal-persona labels (None included) of a tiny set."""
    model, ds = make(data, vocab, select_none=True)
    batch = ds.collate(list(range(16)))
    labels = batch.persona_label
    assert (labels == -1).any() and (labels >= 0).any()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    acc0 = int(model.loss(batch)["persona_correct"]) / 16
    model.train()
    for _ in range(80):
        opt.zero_grad()
        model.loss(batch, task=CDNET)["loss"].backward()
        opt.step()
    model.eval()
    acc = int(model.loss(batch)["persona_correct"]) / 16
    assert acc >= 0.9 > acc0
    # Decoding reports the same choice: the label index, -1 for the None label.
    selected = greedy(model, batch, max_len=5).selected_persona
    assert (selected == labels).float().mean() >= 0.9


class FixedChoice(torch.nn.Module):
    """Stands in for the memory network: even rows pick "no persona", odd rows sentence 1."""

    def forward(self, query, memory, mask, bias=None):
        b, m, _ = memory.shape
        logits = torch.zeros(b, m + 1)
        logits[0::2, m] = 1.0
        logits[1::2, 1] = 1.0
        return [logits], query


def test_none_selection_gives_zero_persona_context(data, vocab):
    model, ds = make(data, vocab, select_none=True)
    model.eval()
    model.memory = FixedChoice()
    batch = ds.collate(list(range(6)))
    state = model.encode(batch)
    assert state["selected"].tolist() == [-1, 1, -1, 1, -1, 1]
    assert model.selected_persona(state).tolist() == [-1, 1, -1, 1, -1, 1]
    (c_p,) = model.extra_contexts(state, torch.randn(batch.size, 16))
    assert torch.all(c_p[0::2] == 0) and torch.all(c_p[1::2].abs().sum(-1) > 0)
    # The persona the decoder attends is sentence 1's word encodings.
    words, _ = model.encode_persona(batch)
    assert torch.equal(state["persona_words"][1::2], words[1::2, 1])


def test_pdnet_uses_k_contexts(data, vocab):
    model, ds = make(data, vocab, k=4)
    model.eval()
    batch = ds.collate(list(range(5)))
    assert batch.congeneric.shape[:2] == (5, 4)
    state = model.encode_pdnet(batch)
    assert state["context"].shape[:3] == batch.congeneric.shape
    assert state["hidden"].shape == (5, 1, 16)
    base = model.pdnet_loss(batch)["nll_sum"]
    # A retrieved context (not the example's own X~) changes PDNet's likelihood...
    other = batch.congeneric.clone()
    other[:, 3] = torch.where(batch.congeneric_mask[:, 3], vocab.unk, other[:, 3])
    changed = model.pdnet_loss(dataclasses.replace(batch, congeneric=other))["nll_sum"]
    assert not torch.isclose(base, changed)
    # ...and the optimal persona is its persona input (zero context for None).
    state = model.encode_pdnet(batch)
    assert torch.equal(state["persona_on"], batch.persona_label >= 0)
    assert torch.equal(state["selected"], batch.persona_label)


def test_pdnet_with_k_1(data, vocab):
    model, ds = make(data, vocab, k=1)
    batch = ds.collate(list(range(5)))
    assert batch.congeneric.shape[1] == 1
    out = model.loss(batch, task=PDNET)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_k_maps_to_congeneric_k_and_is_checked(data, vocab):
    assert PEDNet.data_config({"k": 7}).congeneric_k == 7
    assert PEDNet.data_config({}).congeneric_k == 15
    with pytest.raises(InputError, match="congeneric_k=7"):  # the stage stored k_max=5 here
        load_split("train", vocab, PEDNet.data_config({"k": 7}), data)


@pytest.mark.parametrize("gamma", [0.5, 0.2])
def test_alternation_frequency_and_determinism(gamma):
    tasks = [choose_task(s, gamma, seed=1) for s in range(4000)]
    share = tasks.count(PDNET) / len(tasks)
    assert abs(share - gamma) < 0.03
    assert tasks == [choose_task(s, gamma, seed=1) for s in range(4000)]
    assert tasks != [choose_task(s, gamma, seed=2) for s in range(4000)]
    assert set(choose_task(s, 0.0) for s in range(200)) == {CDNET}
    assert set(choose_task(s, 1.0) for s in range(200)) == {PDNET}


def test_training_alternates_and_evaluation_is_cdnet(data, vocab):
    model, ds = make(data, vocab, gamma=0.5)
    batch = ds.collate(list(range(4)))
    picked = [float(model.loss(batch, step=s)["task_pdnet"]) for s in range(20)]
    assert picked == [float(choose_task(s, 0.5) == PDNET) for s in range(20)]
    assert 0 < sum(picked) < 20
    model.eval()
    assert all(float(model.loss(batch, step=s)["task_pdnet"]) == 0 for s in range(20))
    with pytest.raises(ValueError, match="task"):
        model.loss(batch, task="both")


def test_sequence_log_prob_matches_nll(data, vocab):
    model, ds = make(data, vocab)
    model.eval()
    batch = ds.collate(list(range(7)))
    with torch.no_grad():
        lp = model.sequence_log_prob(batch)
        out = model.loss(batch)
    assert lp.shape == (7,) and torch.all(lp < 0)
    assert float(-lp.sum()) == pytest.approx(float(out["nll_sum"]), rel=1e-5)


def test_generations_select_persona_in_range_or_null(data, vocab):
    model, ds = make(data, vocab, split="test")
    rows = generate_rows(model, ds, batch_size=4, max_len=8)
    assert len(rows) == len(ds)
    for r in rows:
        s = r["selected_persona"]
        assert s is None or 0 <= s < len(r["persona"])


def test_memory_hop_residuals():
    torch.manual_seed(0)
    memory, mask, query = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool), torch.randn(2, 8)
    hops_q = MemoryHops(8, hops=3, residual="query")
    hops_p = MemoryHops(8, hops=3, residual="previous")
    (lq, _), (lp, _) = hops_q(query, memory, mask), hops_p(query, memory, mask)
    assert torch.allclose(lq[1], lp[1])  # hop 2's query is o_1 + m_1 either way
    assert not torch.allclose(lq[2], lp[2])
    with pytest.raises(ValueError):
        MemoryHops(8, residual="sum")


def test_train_loop_and_generation_round_trip(data, vocab, tmp_path):
    from pipeline.train import load_trained, train

    params = {"train": {"epochs": 1, "batch_size": 16}, "model": {"hidden": 16, "dropout": 0.0},
              "pednet": {"k": 2, "gamma": 0.5}}
    out = train("pednet", params, data_dir=data, checkpoint_dir=tmp_path / "ck", live_dir=tmp_path / "live")
    assert out["steps"] > 0 and out["best_val_nll"] < 20
    model = load_trained(tmp_path / "ck" / "best.pt", vocab)
    assert model.params["k"] == 2 and type(model).data_config(model.params).congeneric_k == 2
    ds = load_split("test", vocab, type(model).data_config(model.params), data)
    rows = generate_rows(model, ds, batch_size=8, max_len=5)
    assert len(rows) == len(ds)
    metrics = (tmp_path / "live" / "metrics.json").read_text()
    assert "persona_acc" in metrics


def test_pdnet_encodes_repeated_contexts_once_with_the_same_result(data, vocab):
    model, ds = make(data, vocab, k=4)
    model.eval()
    batch = ds.collate(list(range(10)))
    flat = batch.congeneric.reshape(-1, batch.congeneric.shape[-1])
    assert torch.unique(flat, dim=0).shape[0] < flat.shape[0]  # the tiny corpus repeats contexts
    with torch.no_grad():
        state = model.encode_pdnet(batch)
        out, h = model.encoder(model.embeddings(flat), batch.congeneric_mask.reshape(flat.shape))
    assert torch.allclose(state["context"], out.view(state["context"].shape), atol=1e-6)
    assert torch.allclose(state["hidden"][:, -1], h[-1].view(10, 4, -1).mean(1), atol=1e-6)


def test_select_none_false_always_picks_a_real_sentence(data, vocab):
    model, ds = make(data, vocab, select_none=False)
    model.eval()
    model.memory = FixedChoice()  # the "no persona" slot wins on even rows
    batch = ds.collate(list(range(6)))
    state = model.encode(batch)
    assert torch.all(state["selected"] >= 0) and torch.all(state["persona_on"])
    assert torch.all(batch.persona_exists.gather(1, state["selected"].unsqueeze(1)))
    # The None slot is still a cross-entropy target (column M).
    assert model.persona_target(batch, state["persona_logits"].shape[1]).max() == state["persona_logits"].shape[1] - 1


def test_probe_oracle_selection_uses_the_labels(data, vocab):
    from pipeline.evaluation.probe import oracle_encode, selection_agreement

    model, ds = make(data, vocab)
    model.eval()
    batch = ds.collate(list(range(8)))
    state = oracle_encode(model, batch)
    assert torch.equal(state["selected"], batch.persona_label)
    assert torch.equal(state["persona_on"], batch.persona_label >= 0)
    rows = [{"selected_persona": s} for s in (0, 1, None, 2)]
    agree = selection_agreement(rows, [0, 2, -1, -1])
    assert agree["selection_accuracy"] == 0.5 and agree["selection_accuracy_where_labelled"] == 0.5
    assert agree["none_selected"] == 0.25 and agree["none_labelled"] == 0.5


def test_persona_encoder_shared_or_separate(data, vocab):
    shared, ds = make(data, vocab)
    assert shared.persona_encoder.encoder is shared.encoder
    separate, _ = make(data, vocab, persona_encoder="separate")
    assert separate.persona_encoder.encoder is not separate.encoder
    n = sum(p.numel() for p in separate.encoder.parameters())
    assert sum(p.numel() for p in separate.parameters()) == sum(p.numel() for p in shared.parameters()) + n
    out = separate.loss(ds.collate(list(range(6))), task=CDNET)
    out["loss"].backward()
    assert separate.persona_encoder.encoder.gru.weight_ih_l0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pednet.persona_encoder 'both': shared | separate"):
        make(data, vocab, persona_encoder="both")


def test_query_cosine_prior_steers_selection_and_is_learned(data, vocab):
    plain, _ = make(data, vocab)
    assert "persona_prior" not in plain.inputs and not hasattr(plain, "prior_scale")
    model, ds = make(data, vocab, selection_prior="query_cosine", prior_scale=1e4)
    assert "persona_prior" in model.inputs
    batch = ds.collate(list(range(8)))
    assert batch.persona_prior.shape == batch.persona_exists.shape
    assert torch.all(batch.persona_prior[~batch.persona_exists] == 0)  # padding slots carry no prior
    model.eval()
    batch.persona_prior = torch.rand(batch.persona_prior.shape, generator=torch.Generator().manual_seed(0))
    state = model.encode(batch)
    # a huge prior decides: p̂ = argmax_i cos(X, p_i) over the real sentences
    expected = batch.persona_prior.masked_fill(~batch.persona_exists, -1).argmax(1)
    assert torch.equal(state["selected"], expected)
    model.train()
    model.loss(batch, task=CDNET)["loss"].backward()
    assert model.prior_scale.grad is not None
    with pytest.raises(ValueError, match="pednet.selection_prior 'bert': none | query_cosine | bilinear"):
        make(data, vocab, selection_prior="bert")


def test_query_cosine_prior_needs_its_column(data, vocab, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    path = copy / "persona_labels" / "valid.parquet"
    pq.write_table(pq.read_table(path).drop(["query_similarities"]), path)
    config = PEDNet.data_config({**PARAMS, "selection_prior": "query_cosine"})
    with pytest.raises(InputError, match="no column query_similarities"):
        load_split("valid", vocab, config, copy)


def test_selection_parts_score_the_memory_network_and_the_prior_apart(data, vocab):
    from pipeline.evaluation.probe import selection_parts

    plain, ds = make(data, vocab, split="valid")
    assert selection_parts(plain, ds) is None  # no prior, nothing to split
    model, ds = make(data, vocab, split="valid", selection_prior="query_cosine", prior_scale=1e4)
    rng = np.random.default_rng(0)
    for ex in ds.examples:  # the tiny corpus' word-overlap cosines tie often; the memory network would break ties
        ex.persona_prior = rng.random(len(ex.persona_prior)).astype(np.float32)
    parts = selection_parts(model, ds, batch_size=3)
    labels = [ds.examples[i].persona_label for i in range(len(ds))]
    hits = [int(np.argmax(ds.examples[i].persona_prior)) == y for i, y in enumerate(labels) if y >= 0]
    assert parts["labelled_turns"] == len(hits) and parts["prior_scale"] == 1e4
    # a huge prior decides: the model chooses as the prior alone does, whose accuracy is argmax cos(X, p_i)'s
    assert parts["accuracy_model"] == parts["accuracy_prior_alone"] == round(sum(hits) / len(hits), 4)
    assert parts["spread_prior_alone"] > 100 * parts["spread_memory_alone"] > 0
    with torch.no_grad():
        model.prior_scale.fill_(0.0)  # no prior: the model is its memory network alone
    parts = selection_parts(model, ds)
    assert parts["accuracy_model"] == parts["accuracy_memory_alone"] and parts["spread_prior_alone"] == 0


def test_probe_command_without_decoding_writes_the_selection_parts(data, tmp_path, monkeypatch):
    import json

    from pipeline.evaluation import probe
    from pipeline.train import train
    from tests.model_inputs import tiny_params

    params = tiny_params(train={"epochs": 1}, pednet_prior={"model": "pednet", "k": 2, "selection_prior": "query_cosine"})
    monkeypatch.chdir(tmp_path)
    train("pednet", params, run_name="pednet_prior", data_dir=data,
          checkpoint_dir=tmp_path / "checkpoints" / "pednet_prior" / "seed1",
          live_dir=tmp_path / "live")
    out = tmp_path / "probe.json"
    probe.main(["pednet_prior", "--no-decode", "--data", str(data), "--split", "valid", "--out", str(out)])
    result = json.loads(out.read_text())
    assert "oracle" not in result and result["model"] == "pednet_prior"  # nothing decoded
    parts = result["selection_parts"]
    assert parts["labelled_turns"] > 0 and 0 <= parts["accuracy_memory_alone"] <= 1
    with pytest.raises(InputError, match="no trained model"):
        probe.main(["pednet_prior", "--seed", "2", "--no-decode", "--data", str(data)])
