"""The bilinear selection prior: the fit, the stage with the real bundled MiniLM on the tiny
model inputs, what PEDNet reads of it, and its failure modes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipeline.dataset import BILINEAR_PRIOR, PERSONA_PRIOR, DataConfig, Vocab, load_split  # noqa: E402
from pipeline.io import InputError, read_parquet, write_parquet  # noqa: E402
from pipeline.models.pednet import PEDNet  # noqa: E402
from pipeline.preprocessing import persona_prior as pp  # noqa: E402
from pipeline.schema import SPLITS  # noqa: E402
from stages import persona_prior as stage  # noqa: E402
from tests.model_inputs import write_model_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_turns_keep_the_persona_order_and_mark_none_and_padding():
    index = {"q": 0, "a": 1, "b": 2, "c": 3}
    t = pp.Turns.build(["q", "q", "q"], [["a", "b"], ["c", "b", "a"], []], [1, None, None], index)
    assert t.persona.tolist() == [[1, 2, -1], [3, 2, 1], [-1, -1, -1]] and t.label.tolist() == [1, -1, -1]
    assert t.labelled().query.tolist() == [0] and pp.accuracy([1, 0, 0], t) == 1.0
    v = np.eye(4)
    logits = pp.prior_logits(v, np.eye(4), 2.0, t)
    assert [len(x) for x in logits] == [2, 3, 0] and all(x.dtype == np.float32 for x in logits)


def test_prior_logits_rank_the_sentences_as_the_chosen_fit_does():
    """Labels from q'Ap with A a swap of two axes: the fit's stored logits choose as it does,
    and far better than retrieval (W = I)."""
    rng = np.random.default_rng(0)
    d, a = 4, np.eye(4)[[1, 0, 2, 3]]
    vectors = rng.normal(size=(2000, d))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    splits, row = {}, 0
    for split, n in (("train", 300), ("valid", 100), ("test", 100)):
        q = np.arange(row, row + n)
        persona = np.arange(row + n, row + 4 * n).reshape(n, 3)
        row += 4 * n
        label = np.argmax(np.einsum("nmd,de,ne->nm", vectors[persona], a, vectors[q]), 1)
        splits[split] = pp.Turns(q, persona, label)
    w, scale, report = pp.select(vectors, splits, ridges=(100.0, 0.0))
    assert report["chosen"]["ridge"] == 0.0 and report["chosen"]["test"] > report["retrieval"]["test"] + 0.2
    assert report["fits"][0]["distance_from_identity"] < 0.05  # a stiff ridge holds W at retrieval
    choices = [int(np.argmax(x)) for x in pp.prior_logits(vectors, w, scale, splits["test"])]
    assert pp.accuracy(choices, splits["test"]) == pytest.approx(report["chosen"]["test"], abs=0.011)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("persona_prior"), k_max=5)


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    """The stage run on the tiny inputs with the project's params (the bundled MiniLM)."""
    out = tmp_path_factory.mktemp("out")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the project's params.yaml: persona_labels' encoder
    try:
        torch.set_num_threads(1)
        stage.main(["--data", str(data), "--out", str(out / "persona_prior"), "--report", str(out / "report.json")])
    finally:
        os.chdir(cwd)
    return out


def test_stage_writes_a_prior_per_persona_sentence_and_the_selector_chat_reproduces(data, written):
    import json

    from pipeline.preprocessing import persona_labels as pl

    report = json.loads((written / "report.json").read_text())
    assert report["chosen"] in report["fits"] and len(report["fits"]) == len(pp.RIDGES)
    assert set(report["retrieval"]) == set(SPLITS) and report["labelled_turns"]["train"] > 0
    for split in SPLITS:
        prepared = read_parquet(data / "prepared" / f"{split}.parquet", ["example_id", "persona"]).to_pydict()
        prior = read_parquet(written / "persona_prior" / f"{split}.parquet").to_pydict()
        assert prior["example_id"] == prepared["example_id"]
        assert [len(x) for x in prior["bilinear_logits"]] == [len(p) for p in prepared["persona"]]
    w, scale = pp.load_selector(written / "persona_prior" / stage.SELECTOR)
    assert w.shape == (384, 384) and scale > 0
    prepared = read_parquet(data / "prepared" / "test.parquet", ["query", "persona"]).to_pydict()
    enc = pl.load_encoder(pl.BUNDLED, layer=-2, max_length=128, device="cpu")
    typed = pp.query_logits(enc, w, scale, prepared["query"][0], prepared["persona"][0])
    stored = read_parquet(written / "persona_prior" / "test.parquet").column("bilinear_logits")[0].as_py()
    np.testing.assert_allclose(typed, stored, atol=2e-4)  # batched vs alone: last-digit noise only


def test_pednet_reads_the_bilinear_logits_as_its_prior(data, written, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shutil.copytree(written / "persona_prior", copy / "persona_prior")
    vocab = Vocab.load(copy / "prepared" / "vocab.parquet")
    config = PEDNet.data_config({"selection_prior": "bilinear", "k": 3})
    assert BILINEAR_PRIOR in config.inputs and PERSONA_PRIOR not in config.inputs
    ds = load_split("valid", vocab, config, copy)
    stored = read_parquet(copy / "persona_prior" / "valid.parquet").column("bilinear_logits").to_pylist()
    batch = ds.collate([0, 1])
    for i in range(2):
        np.testing.assert_array_equal(batch.persona_prior[i, : len(stored[i])].numpy(), np.float32(stored[i]))

    shutil.rmtree(copy / "persona_prior")
    with pytest.raises(InputError, match="written by `python -m stages.persona_prior`"):
        load_split("valid", vocab, config, copy)


def test_one_selection_prior_at_a_time(data):
    vocab = Vocab.load(data / "prepared" / "vocab.parquet")
    config = DataConfig(inputs=frozenset({"persona", PERSONA_PRIOR, BILINEAR_PRIOR}))
    with pytest.raises(ValueError, match="a model reads one selection prior"):
        load_split("valid", vocab, config, data)


def test_stage_refuses_labels_of_other_turns(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    path = copy / "persona_labels" / "valid.parquet"
    table = pq.read_table(path)
    write_parquet(table.slice(1), path)  # a turn short
    with pytest.raises(InputError, match="example_id differs from data/prepared/valid.parquet"):
        stage.load_split(copy, "valid")
