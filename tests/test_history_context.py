"""The GCL paper's multi-turn context (``model.context: history``): both speakers' turns
joined by <eot>, the last ``max_context_tokens`` tokens, for the dataset and for chat."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline.dataset import DataConfig, Vocab, load_split
from pipeline.io import InputError
from pipeline.preprocessing.text import gcl_context
from pipeline.schema import EOT, SILENCE
from pipeline.train import CRITERIA, criterion_value
from tests.model_inputs import write_model_inputs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("history"))


def test_history_joins_both_speakers_with_eot_and_keeps_the_last_tokens(data_dir):
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    prepared = pq.read_table(data_dir / "prepared" / "train.parquet").to_pylist()
    query = load_split("train", vocab, DataConfig(), data_dir)
    full = load_split("train", vocab, DataConfig(context="history", max_context_tokens=0), data_dir)
    cut = load_split("train", vocab, DataConfig(context="history", max_context_tokens=7), data_dir)
    eot = vocab.stoi[EOT]
    seen_multi = False
    for i, row in enumerate(prepared):
        utterances = [u for u in [*row["history"], row["query"]] if u != SILENCE]
        expect = f" {EOT} ".join(utterances).split() or [SILENCE]
        assert [vocab.itos[j] for j in full[i].query] == [t if t in vocab.stoi else "<unk>" for t in expect]
        ids = cut[i].query.tolist()
        assert len(ids) <= 7 and (not ids or ids[0] != eot)  # truncated from the left, never on a separator
        assert ids == full[i].query.tolist()[-len(ids):]
        if row["history"] and row["history"] != [SILENCE]:
            seen_multi = True
            assert eot in full[i].query.tolist()
            assert full[i].response.tolist() == query[i].response.tolist()  # the response is untouched
        if not utterances:  # the bot opens the dialogue: the query stays __silence__
            assert [vocab.itos[j] for j in full[i].query] == [SILENCE]
    assert seen_multi


def test_gcl_context_on_a_tiny_dialogue():
    history = [SILENCE, "hi there", "hello ! how are you ?"]
    assert gcl_context(history, "good , you ?", 120) == (
        ["hi", "there", EOT, "hello", "!", "how", "are", "you", "?", EOT, "good", ",", "you", "?"])
    assert gcl_context(history, "good , you ?", 6) == ["?", EOT, "good", ",", "you", "?"]
    assert gcl_context(history, "good , you ?", 5) == ["good", ",", "you", "?"]  # no leading <eot>


def test_bad_context_param_and_pdnet_in_history_mode_are_errors(data_dir):
    with pytest.raises(InputError, match="model.context"):
        DataConfig(context="dialogue")
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    with pytest.raises(InputError, match="single-turn"):
        load_split("train", vocab, DataConfig(context="history", inputs=frozenset({"congeneric"})), data_dir)


def test_criteria_are_weighted_validation_metrics():
    assert criterion_value({"nll": 4.0}, "nll", "seq2seq") == 4.0
    assert criterion_value({"nll": 4.0, "persona_ce": 1.0}, "persona_nll", "pednet") == pytest.approx(0.7 + 1.2)
    assert criterion_value({"nll": 4.0, "cl": 0.6}, "cl_nll", "seq2seq") == pytest.approx(2.6)
    assert CRITERIA["cl_nll"] == {"cl": 1.0, "nll": 0.5}  # the GCL authors' checkpoint selection
    with pytest.raises(InputError, match="contrastive"):
        criterion_value({"nll": 4.0}, "cl_nll", "seq2seq")
