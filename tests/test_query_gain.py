"""The collapse diagnostic ``query_gain``: log p(r | c) − log p(r | c′) per token, c′ a
shuffled context (pipeline.decode.query_log_probs), from generate to results.md."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.dataset import ALL_INPUTS, DataConfig, Vocab, load_split
from pipeline.decode import derangement, query_log_probs, shuffled_batch
from pipeline.evaluation import metrics, report, stats
from pipeline.io import InputError
from pipeline.models import model_params
from pipeline.schema import GENERATIONS, GENERATIONS_LEGACY
from tests.model_inputs import build_tiny, tiny_params, write_model_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("query_gain"), k_max=5)


@pytest.fixture(scope="module")
def vocab(data):
    return Vocab.load(data / "prepared" / "vocab.parquet")


@pytest.fixture(scope="module")
def seq2seq(data, vocab):
    params = model_params(tiny_params(model={"dropout": 0.0}), "seq2seq")
    model, ds = build_tiny("seq2seq", params, data, vocab, split="test")
    return model.eval(), ds


# ---------------------------------------------------------------- the pairing


def test_derangement_never_keeps_a_row_and_is_seeded():
    for n in (2, 3, 5, 17, 100):
        for seed in range(5):
            partner = derangement(n, seed)
            assert partner.dtype == np.int64 and partner.shape == (n,)
            assert not np.any(partner == np.arange(n)), (n, seed)
            assert sorted(partner.tolist()) == list(range(n))  # each context lent exactly once
            assert np.array_equal(partner, derangement(n, seed))
    assert not np.array_equal(derangement(100, 1), derangement(100, 2))
    for n in (0, 1):
        with pytest.raises(ValueError, match="at least two"):
            derangement(n)


def test_shuffled_batch_swaps_only_the_context_side(data, vocab):
    ds = load_split("test", vocab, DataConfig(congeneric_k=3, inputs=ALL_INPUTS), data)
    partner = derangement(len(ds), 7)
    index = list(range(0, len(ds), 2))
    own, other = ds.collate(index), shuffled_batch(ds, index, partner)
    lender = ds.collate([int(partner[i]) for i in index])
    for name in ("query", "query_mask", "specific_words", "specific_words_mask", "congeneric", "congeneric_mask"):
        assert torch.equal(getattr(other, name), getattr(lender, name)), name
    for name in ("index", "response", "response_mask", "persona", "persona_mask", "persona_exists",
                 "persona_label"):
        assert torch.equal(getattr(other, name), getattr(own, name)), name
    assert not torch.equal(other.query, own.query)


# ---------------------------------------------------------------- the log-probs


def test_identity_pairing_gives_exactly_zero_gain(seq2seq):
    model, ds = seq2seq
    own, same = query_log_probs(model, ds, batch_size=5, partner=np.arange(len(ds)))
    assert np.array_equal(own, same)
    # own = the teacher-forced log-prob per token (</s> included) of each reference
    batch = ds.collate(list(range(len(ds))))
    with torch.no_grad():
        expected = model.sequence_log_prob(batch) / batch.response_mask.sum(1)
    np.testing.assert_allclose(own, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(own < 0)


def test_a_model_that_uses_its_context_gains_something(seq2seq):
    model, ds = seq2seq
    model.train()
    own, shuffled = query_log_probs(model, ds, batch_size=4, seed=3)
    assert model.training  # the mode is restored
    model.eval()
    assert own.shape == shuffled.shape == (len(ds),)
    assert np.abs(own - shuffled).max() > 1e-4  # the context changes the reference's probability
    # batching does not change the numbers
    own2, shuffled2 = query_log_probs(model, ds, batch_size=len(ds), seed=3)
    np.testing.assert_allclose(own, own2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shuffled, shuffled2, rtol=1e-5, atol=1e-5)


def test_a_model_that_ignores_its_input_gains_zero(seq2seq):
    """The encoder sees one <unk> instead of the query: the decoder gets nothing from c."""
    model, ds = seq2seq
    encode = type(model).encode

    def blind(self, batch):
        unk = torch.full((batch.size, 1), ds.vocab.unk, dtype=torch.long)
        return encode(self, dataclasses.replace(batch, query=unk, query_mask=torch.ones_like(unk, dtype=torch.bool)))

    model.encode = blind.__get__(model)
    try:
        own, shuffled = query_log_probs(model, ds, batch_size=4, seed=3)
    finally:
        del model.encode
    gain = metrics.query_metrics(own.tolist(), shuffled.tolist())["query_gain"]
    assert gain == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(own, shuffled, atol=1e-5)


def test_every_input_kind_runs_under_bf16(data, vocab):
    """PEDNet reads persona, specific words and congeneric contexts; decoding precision."""
    params = model_params(tiny_params(pednet={"k": 3}), "pednet")
    model, ds = build_tiny("pednet", params, data, vocab, split="test")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        own, shuffled = query_log_probs(model.eval(), ds, batch_size=6)
    assert np.all(np.isfinite(own)) and np.all(np.isfinite(shuffled))
    assert np.abs(own - shuffled).max() > 0


# ---------------------------------------------------------------- metrics and readers


def test_query_metrics():
    out = metrics.query_metrics([-1.0, -2.0], [-3.0, -2.5])
    assert out == pytest.approx({"query_gain": 1.25, "query_log_p_own": -1.5, "query_log_p_shuffled": -2.75})
    assert metrics.query_metrics(None, None) == {}
    assert metrics.query_metrics([None, None], [None, None]) == {}
    with pytest.raises(ValueError, match="null in 1 of 2"):
        metrics.query_metrics([-1.0, None], [-1.0, None])


def _generations(n: int, log_probs: bool) -> pa.Table:
    cols = {
        "example_id": [f"test-{d:05d}-00" for d in range(n)],
        "persona": [[f"i like thing {d} ."] for d in range(n)],
        "context": ["hi there ?"] * n,
        "reference": ["i like my dog ."] * n,
        "hypothesis": ["i like my cat ."] * n,
        "selected_persona": [None] * n,
    }
    if not log_probs:
        return pa.Table.from_pydict(cols, schema=GENERATIONS_LEGACY)
    cols["log_p_own"] = [-1.0 - 0.1 * d for d in range(n)]
    cols["log_p_shuffled"] = [-2.0 - 0.1 * d for d in range(n)]
    return pa.Table.from_pydict(cols, schema=GENERATIONS)


def test_read_generations_accepts_files_without_the_columns(tmp_path):
    pq.write_table(_generations(3, False), tmp_path / "old.parquet")
    pq.write_table(_generations(3, True), tmp_path / "new.parquet")
    old = metrics.read_generations(tmp_path / "old.parquet")
    new = metrics.read_generations(tmp_path / "new.parquet")
    assert old["log_p_own"] == old["log_p_shuffled"] == [None] * 3
    assert new["log_p_own"] == pytest.approx([-1.0, -1.1, -1.2])
    bad = _generations(3, True).to_pydict()
    bad["log_p_shuffled"][1] = None
    pq.write_table(pa.Table.from_pydict(bad, schema=GENERATIONS), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="row 1: .*null in some rows"):
        metrics.read_generations(tmp_path / "bad.parquet")
    bad["log_p_shuffled"][1] = float("-inf")
    pq.write_table(pa.Table.from_pydict(bad, schema=GENERATIONS), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="not finite"):
        metrics.read_generations(tmp_path / "bad.parquet")


def test_bootstrap_statistics_of_query_gain(tmp_path):
    pq.write_table(_generations(4, True), tmp_path / "new.parquet")
    gen = metrics.read_generations(tmp_path / "new.parquet")
    st = stats.example_stats(gen, ["query_gain"], source="new")
    assert st.values["query_gain"] == pytest.approx([1.0] * 4)
    assert stats.metric_on_resamples(st, "query_gain", np.ones((1, 4)))[0] == pytest.approx(1.0)
    pq.write_table(_generations(4, False), tmp_path / "old.parquet")
    with pytest.raises(InputError, match="regenerate"):
        stats.example_stats(metrics.read_generations(tmp_path / "old.parquet"), ["query_gain"], source="old")


# ---------------------------------------------------------------- the stages


def _checkpoint(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_name": model.name, "model_params": model.params, "model": model.state_dict()}, path)


def test_generate_then_evaluate_then_report(tmp_path, data, vocab, seq2seq, monkeypatch):
    import shutil

    from stages import controls, evaluate, generate

    model, _ = seq2seq
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "data/persona_idf").mkdir()
    (tmp_path / "data/persona_idf/idf.tsv").write_text("dog\t0.16\n", encoding="utf-8")
    params = tiny_params()
    params["evaluate"] = {"idf_missing": 0.5, "embedding_a": 0.001, "constant_reply": "i love to read ."}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _checkpoint(model, tmp_path / "checkpoints/seq2seq/seed1/best.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_NO_PROGRESS", "1")

    path = generate.main(["seq2seq", "--seed", "1"])
    table = pq.read_table(path)
    assert table.schema.equals(GENERATIONS)
    own, shuffled = (np.array(table.column(c).to_pylist()) for c in ("log_p_own", "log_p_shuffled"))
    assert table.column("log_p_own").null_count == 0 and np.all(own < 0)
    first = path.read_bytes()
    assert generate.main(["seq2seq", "--seed", "1"]).read_bytes() == first  # same pairing, same bytes

    evaluate.main(["seq2seq", "--seed", "1"])
    values = json.loads((tmp_path / "reports/metrics/seq2seq/seed1.json").read_text())
    assert set(values) == set(metrics.METRIC_KEYS) | set(metrics.DEGENERACY_KEYS) | set(metrics.QUERY_KEYS) | {"n_examples"}
    assert values["query_gain"] == pytest.approx(float(np.mean(own - shuffled)))
    assert values["query_gain"] == pytest.approx(values["query_log_p_own"] - values["query_log_p_shuffled"])

    # an older file (no log-prob columns) and the controls still evaluate, without query_gain
    pq.write_table(table.select(GENERATIONS_LEGACY.names), tmp_path / "reports/generations/seq2seq/seed2.parquet")
    evaluate.main(["seq2seq", "--seed", "2"])
    old = json.loads((tmp_path / "reports/metrics/seq2seq/seed2.json").read_text())
    assert set(old) == set(metrics.METRIC_KEYS) | set(metrics.DEGENERACY_KEYS) | {"n_examples"}
    assert {k: old[k] for k in metrics.METRIC_KEYS} == {k: values[k] for k in metrics.METRIC_KEYS}
    controls.main()
    assert pq.read_table("reports/generations/gold/control.parquet").column("log_p_own").null_count > 0
    evaluate.main(["gold"])
    assert "query_gain" not in json.loads((tmp_path / "reports/metrics/gold/control.json").read_text())

    # results.md: the seed with log-probs has the gain; a run whose seeds lack it shows "—"
    summary = {
        "seq2seq": stats.summarize_seeds([values]),
        "gpmn": stats.summarize_seeds([old]),
        "gold": stats.summarize_seeds([json.loads((tmp_path / "reports/metrics/gold/control.json").read_text())]),
    }
    text = report.render(summary, [], {"seq2seq": None, "gpmn": None, "pednet": None},
                         ["seq2seq", "gpmn", "pednet"], ["gold"], "parlai")
    section = text.split("## Context use against a shuffled context", 1)[1].split("\n## ", 1)[0]
    assert "| Model | Source | log p(r \\| c) | log p(r \\| c′) | query gain (nats/token) |" in section
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    assert f"{values['query_gain']:.3f}" in rows["Seq2Seq"]
    assert rows["GPMN"].count(report.NO_LOG_PROBS) == 3
    assert "not run" in rows["PEDNet"] and "Gold (reference)" not in rows
