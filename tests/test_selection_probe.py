"""pipeline.evaluation.selection_probe on tiny generated inputs: the selector trains on the persona
cross-entropy alone and the report says how it scores on train and valid."""

from __future__ import annotations

import json

import pytest

from pipeline.evaluation import selection_probe
from tests.model_inputs import write_model_inputs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("probe"), k_max=5)


def test_probe_learns_the_training_labels(data):
    out = selection_probe.probe(epochs=6, overrides={"k": 2, "hidden": 16}, data=data, lr=1e-2, batch_size=8)
    curve = out["curve"]
    assert [c["epoch"] for c in curve] == list(range(7))
    for c in curve:
        for split in ("train", "valid"):
            assert 0.0 <= c[split]["accuracy_labelled"] <= 1.0 and c[split]["persona_ce"] > 0
    # the selection path is trainable: the training cross-entropy falls
    assert curve[-1]["train"]["persona_ce"] < curve[0]["train"]["persona_ce"]
    assert out["best_epoch"] >= 1 and out["overrides"] == {"k": 2, "hidden": 16}


def test_main_writes_the_report(data, tmp_path, monkeypatch):
    monkeypatch.setattr(selection_probe, "probe", lambda epochs, overrides: {"epochs": epochs, "o": overrides})
    out = tmp_path / "probe.json"
    selection_probe.main(["--epochs", "2", "--set", "freeze_embeddings=true", "k=2", "--out", str(out)])
    assert json.loads(out.read_text()) == {"epochs": 2, "o": {"freeze_embeddings": True, "k": 2}}


def test_set_without_equals_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        selection_probe.main(["--set", "freeze_embeddings"])
    assert exit_info.value.code == 2
    assert "--set 'freeze_embeddings': expected KEY=VALUE" in capsys.readouterr().err
