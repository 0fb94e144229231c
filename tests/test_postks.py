"""PostKS on the tiny fabricated model inputs of tests/model_inputs.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.dataset import Vocab
from pipeline.decode import generate_rows, greedy
from tests.model_inputs import build_tiny, write_model_inputs

PARAMS = {"hidden": 16, "dropout": 0.0, "bow_warmup_epochs": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("postks"))


@pytest.fixture(scope="module")
def vocab(data):
    return Vocab.load(data / "prepared" / "vocab.parquet")


def make(data, vocab, split="train", seed=0, **overrides):
    return build_tiny("postks", {**PARAMS, **overrides}, data, vocab, split, seed)


def test_forward_backward(data, vocab):
    model, ds = make(data, vocab)
    batch = ds.collate(list(range(6)))
    out = model.loss(batch, epoch=5)
    assert torch.isfinite(out["loss"])
    assert float(out["loss"].detach()) == pytest.approx(
        float(out["nll_sum"] / out["n_tokens"] + out["kl"] + out["bow"]), rel=1e-5)
    out["loss"].backward()
    grads = dict(model.named_parameters())
    for name in ("posterior_query.weight", "bow.proj.weight", "decoder.cells.0.weight_ih", "encoder.gru.weight_ih_l0"):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name


def test_bow_only_warm_up(data, vocab):
    model, ds = make(data, vocab, bow_warmup_epochs=2)
    batch = ds.collate(list(range(6)))
    for epoch in (0, 1):
        model.zero_grad()
        out = model.loss(batch, epoch=epoch)
        assert torch.equal(out["loss"].detach(), out["bow"])
        out["loss"].backward()
        assert model.decoder.cells[0].weight_ih.grad is None  # the decoder does not run
        assert model.posterior_query.weight.grad.abs().sum() > 0  # straight-through Gumbel
    with torch.no_grad():
        out = model.loss(batch, epoch=2)
    assert float(out["loss"]) > float(out["bow"]) and float(out["n_tokens"]) > 0


def test_posterior_in_training_prior_at_test(data, vocab):
    model, ds = make(data, vocab)
    batch = ds.collate(list(range(8)))
    state = model.encode(batch)
    assert "posterior_logits" in state
    # The knowledge is exactly one persona sentence vector (hard Gumbel sample).
    assert torch.all(batch.persona_exists.gather(1, state["selected"].unsqueeze(1)))
    model.eval()
    state = model.encode(batch)
    assert "posterior_logits" not in state
    assert torch.equal(state["selected"], state["prior_logits"].argmax(-1))
    # Evaluation never reads the response to select: changing it leaves the choice alone.
    other = dataclasses.replace(batch, response=batch.response.flip(0), response_mask=batch.response_mask.flip(0))
    assert torch.equal(model.encode(other)["selected"], state["selected"])


def test_test_selection_oracles_pick_the_label_or_the_posterior(data, vocab):
    """Decoding's diagnostic choices: the label where there is one (else the prior), or the
    posterior that reads the gold response; the prior stays the default."""
    model, ds = make(data, vocab)
    model.eval()
    batch = ds.collate(list(range(len(ds))))
    prior = model.encode(batch)["selected"]
    labelled = batch.persona_label >= 0
    model.params["test_selection"] = "label"
    chosen = model.encode(batch)["selected"]
    assert torch.equal(chosen[labelled], batch.persona_label[labelled]) and torch.equal(chosen[~labelled], prior[~labelled])
    model.params["test_selection"] = "posterior"
    _, u_p = model.persona_encoder(model.embeddings(batch.persona), batch.persona_mask)
    want = model.posterior_logits(batch, model.encode(batch)["hidden"][:, -1], u_p).argmax(-1)
    assert torch.equal(model.encode(batch)["selected"], want)
    model.params["test_selection"] = "oracle"
    with pytest.raises(ValueError, match="test_selection"):
        model.encode(batch)


def test_kl_trains_prior_only_when_detached(data, vocab):
    model, ds = make(data, vocab, kl_detach_posterior=True)
    batch = ds.collate(list(range(6)))
    state = model.encode(batch)
    model.kl(state).backward()
    assert model.posterior_query.weight.grad is None or model.posterior_query.weight.grad.abs().sum() == 0
    model2, _ = make(data, vocab, kl_detach_posterior=False)
    model2.kl(model2.encode(batch)).backward()
    assert model2.posterior_query.weight.grad.abs().sum() > 0


def test_kl_is_zero_for_equal_distributions(data, vocab):
    model, ds = make(data, vocab)
    logits = torch.tensor([[1.0, 2.0, -1e9], [0.5, 0.5, 0.5]])
    assert float(model.kl({"prior_logits": logits, "posterior_logits": logits})) == pytest.approx(0.0, abs=1e-6)
    kl = model.kl({"prior_logits": logits, "posterior_logits": logits.flip(-1).clamp(min=-1e9)})
    assert float(kl) > 0


def test_loss_falls_overfitting_a_tiny_set(data, vocab):
    model, ds = make(data, vocab)
    batch = ds.collate(list(range(8)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    before = float(model.loss(batch)["nll_sum"])
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model.loss(batch, epoch=5)["loss"].backward()
        opt.step()
    model.eval()
    after = float(model.loss(batch)["nll_sum"])
    assert after < 0.5 * before


def test_persona_accuracy_counts_labelled_examples(data, vocab):
    model, ds = make(data, vocab)
    model.eval()
    batch = ds.collate(list(range(len(ds))))
    out = model.loss(batch)
    labelled = batch.persona_label >= 0
    assert 0 < int(out["persona_total"]) == int(labelled.sum()) < batch.size
    pick = greedy(model, batch, max_len=3).selected_persona
    assert int(out["persona_correct"]) == int(((pick == batch.persona_label) & labelled).sum())


@pytest.mark.parametrize("query", ["concat", "response"])
def test_validation_counts_the_posteriors_selection_too(data, vocab, query):
    from pipeline.train import evaluate

    model, ds = make(data, vocab, posterior_query=query)
    assert hasattr(model, "posterior_query")  # the paper's map exists either way (unused for "response")
    model.eval()
    batch = ds.collate(list(range(len(ds))))
    out = model.loss(batch)
    _, u_p = model.persona_encoder(model.embeddings(batch.persona), batch.persona_mask)
    posterior = model.posterior_logits(batch, model.encode(batch)["hidden"][:, -1], u_p)
    labelled = batch.persona_label >= 0
    assert int(out["posterior_correct"]) == int(((posterior.argmax(-1) == batch.persona_label) & labelled).sum())
    metrics = evaluate(model, ds, 4, torch.device("cpu"))
    assert metrics["posterior_acc"] == pytest.approx(int(out["posterior_correct"]) / int(out["persona_total"]))
    model.train()
    assert "posterior_logits" in model.encode(batch)


def test_sequence_log_prob_matches_nll(data, vocab):
    model, ds = make(data, vocab)
    model.eval()
    batch = ds.collate(list(range(7)))
    with torch.no_grad():
        lp = model.sequence_log_prob(batch)
        out = model.loss(batch)
    assert lp.shape == (7,) and torch.all(lp < 0)
    assert float(-lp.sum()) == pytest.approx(float(out["nll_sum"]), rel=1e-5)


def test_generations_select_a_persona_in_range(data, vocab):
    model, ds = make(data, vocab, split="test")
    rows = generate_rows(model, ds, batch_size=4, max_len=8, method="beam", beam_size=3)
    assert len(rows) == len(ds)
    assert all(r["selected_persona"] is not None and 0 <= r["selected_persona"] < len(r["persona"]) for r in rows)


def test_warm_up_validations_do_not_stop_training(data, tmp_path):
    from pipeline.train import train

    params = {"train": {"epochs": 4, "batch_size": 16, "early_stopping": 1, "lr_patience": 0},
              "model": {"hidden": 16, "dropout": 0.0}, "postks": {"bow_warmup_epochs": 2}}
    out = train("postks", params, data_dir=data, checkpoint_dir=tmp_path / "ck", live_dir=tmp_path / "live")
    # Validation NLL cannot improve while only the BOW loss trains; stopping there would
    # end the run before the decoder ever trained.
    assert out["epochs"] >= 3


def test_bow_output_layer_tied_or_own(data, vocab):
    own, _ = make(data, vocab, bow_tied=False)
    assert own.bow.out is not None and own.bow.embeddings is None
    tied, _ = make(data, vocab, bow_tied=True)
    assert tied.bow.out is None and tied.bow.embeddings is tied.embeddings
