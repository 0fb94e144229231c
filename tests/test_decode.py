"""The shared greedy / beam decoder."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
import torch

from pipeline import schema
from pipeline.dataset import DataConfig, Vocab, load_split
from pipeline.decode import beam_search, decode, generate_rows, greedy
from pipeline.models import Generator, ModelContext, build_model, model_params
from pipeline.models.layers import load_embedding_matrix
from tests.model_inputs import tiny_params, write_model_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data_dir = write_model_inputs(tmp_path_factory.mktemp("inputs"))
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    emb = load_embedding_matrix(data_dir / "embeddings" / "vectors.parquet", vocab.itos)
    models = {}
    for name in ("seq2seq", "gpmn"):
        params = model_params(tiny_params(), name)
        ds = load_split("test", vocab, DataConfig.from_params(params, frozenset({"persona"})), data_dir)
        torch.manual_seed(0)
        models[name] = build_model(name, params, ModelContext.from_vocab(vocab, emb, ds)).eval()
    return vocab, ds, models


class Scripted(Generator):
    """Emits script[b][t] with probability 0.9 at step t (then </s> forever)."""

    def __init__(self, script: list[list[int]], vocab_size: int = 12):
        super().__init__({"emb_dim": 4}, ModelContext(vocab_size))
        self.script = script

    def encode(self, batch):
        return {"row": torch.arange(batch.size), "t": torch.zeros(batch.size, dtype=torch.long)}

    def decode_step(self, state, prev):
        lp = torch.full((state["row"].shape[0], self.vocab_size), 0.1 / (self.vocab_size - 1)).log()
        for i, (r, t) in enumerate(zip(state["row"].tolist(), state["t"].tolist(), strict=True)):
            seq = self.script[r]
            lp[i, seq[t] if t < len(seq) else self.eos] = torch.tensor(0.9).log()
        return lp, {**state, "t": state["t"] + 1}


def _batch(ds, n):
    return ds.collate(list(range(n)))


def test_greedy_stops_at_eos_and_pads_after():
    model = Scripted([[5, 6, 3], [7, 3], [5, 5, 5, 5, 5, 5, 5, 5]])
    batch = dataclasses.replace(_dummy_batch(3))
    out = greedy(model, batch, max_len=6)
    assert out.tokens.tolist() == [[5, 6, 3, 0, 0, 0], [7, 3, 0, 0, 0, 0], [5, 5, 5, 5, 5, 5]]
    short = greedy(Scripted([[5, 3], [3]]), _dummy_batch(2), max_len=30)
    assert short.tokens.shape == (2, 2)  # stops as soon as every row has ended
    assert out.selected_persona is None


def _dummy_batch(b):
    from pipeline.dataset import Batch

    ids = torch.ones(b, 2, dtype=torch.long)
    return Batch(torch.arange(b), ids, ids > 0, ids, ids > 0)


def test_beam_finds_what_greedy_misses():
    class Trap(Scripted):
        # step 0: token 5 (p .6) or 6 (p .4); after 5 everything is flat, after 6 </s> is sure
        def decode_step(self, state, prev):
            b = prev.shape[0]
            lp = torch.full((b, self.vocab_size), -20.0)
            if int(state["t"][0]) == 0:
                lp[:, 5], lp[:, 6] = torch.tensor(0.6).log(), torch.tensor(0.4).log()
            else:
                flat = torch.full((self.vocab_size,), (1.0 / self.vocab_size)).log()
                lp = torch.where((prev == 6)[:, None], lp.index_fill(1, torch.tensor([3]), 0.0), flat)
            return lp, {**state, "t": state["t"] + 1}

    model = Trap([[]])
    assert greedy(model, _dummy_batch(1), 5).tokens[0, 0] == 5
    best = beam_search(model, _dummy_batch(1), beam_size=3, max_len=5)
    assert best.tokens[0].tolist()[:2] == [6, 3]
    torch.testing.assert_close(best.scores[0], torch.tensor(0.4).log())


class Markov(Scripted):
    """p(next | prev) from a table; the rest of the mass spread over the other tokens."""

    TABLE = {2: {5: 0.5, 6: 0.5}, 5: {3: 0.2}, 6: {7: 0.67}, 7: {8: 0.67}, 8: {9: 0.67}, 9: {10: 0.67},
             10: {3: 0.67}}

    def decode_step(self, state, prev):
        rows = []
        for p in prev.tolist():
            probs = self.TABLE.get(p, {})
            rest = (1 - sum(probs.values())) / (self.vocab_size - len(probs))
            rows.append([probs.get(v, rest) for v in range(self.vocab_size)])
        return torch.tensor(rows).log(), state


def test_length_penalty_favours_longer_likely_hypotheses():
    model = Markov([[]])
    plain = beam_search(model, _dummy_batch(1), beam_size=2, max_len=8)
    normed = beam_search(model, _dummy_batch(1), beam_size=2, max_len=8, length_penalty=1.0)
    assert plain.tokens[0].tolist()[:2] == [5, 3]  # log .5 + log .2 = -2.30 > -2.69
    assert normed.tokens[0].tolist()[:6] == [6, 7, 8, 9, 10, 3]  # mean -0.45 > -1.15


def test_beam_one_equals_greedy(setup):
    vocab, ds, models = setup
    for model in models.values():
        batch = _batch(ds, 10)
        g, b1 = greedy(model, batch, 12), beam_search(model, batch, beam_size=1, max_len=12)
        assert torch.equal(g.tokens, b1.tokens[:, : g.tokens.shape[1]])
        torch.testing.assert_close(g.scores, b1.scores)


def test_beam_scores_are_sequence_log_probs(setup):
    vocab, ds, models = setup
    model = models["gpmn"]
    batch = _batch(ds, 6)
    out = beam_search(model, batch, beam_size=4, max_len=10)
    assert out.tokens.shape[0] == 6 and out.tokens.shape[1] <= 10
    ended = (out.tokens == vocab.eos).any(1)
    # score the chosen hypotheses teacher-forced: same numbers
    hyp = out.tokens.clone()
    mask = torch.cumsum((hyp == vocab.eos).long(), 1) - (hyp == vocab.eos).long() == 0
    hyp[~mask] = vocab.pad
    rescored = model.sequence_log_prob(dataclasses.replace(batch, response=hyp, response_mask=mask))
    torch.testing.assert_close(rescored[ended], out.scores[ended], rtol=1e-4, atol=1e-4)
    beam_norm = decode(model, batch, "beam", beam_size=4, max_len=10, length_penalty=1.0)
    assert beam_norm.tokens.shape[0] == 6
    with pytest.raises(ValueError):
        decode(model, batch, "nucleus")


def test_generate_rows_schema(setup):
    vocab, ds, models = setup
    rows = generate_rows(models["gpmn"], ds, method="beam", beam_size=2, max_len=8, batch_size=7)
    table = pa.Table.from_pylist(rows, schema=schema.GENERATIONS)
    assert table.num_rows == len(ds)
    assert table.column("example_id").to_pylist() == ds.texts["example_id"]
    assert table.column("reference").to_pylist() == ds.texts["response"]
    assert set(table.column("selected_persona").to_pylist()) == {None}
    assert all(len(h.split()) <= 8 for h in table.column("hypothesis").to_pylist())
