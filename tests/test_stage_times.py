"""Stage wall-time records (pipeline.stage_times): written by every stage run, collected by kind."""

from __future__ import annotations

import json

import pytest

from pipeline import stage_times
from pipeline.io import InputError, run_stage


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_STAGE_TIMES", str(tmp_path))
    monkeypatch.setattr(stage_times, "INFO", {})
    return tmp_path


def test_a_finished_stage_writes_its_record(records, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "train@seq2seq-1")
    run_stage(lambda: stage_times.note(precision="fp32"))
    rec = json.loads((records / "train@seq2seq-1.json").read_text())
    assert rec["stage"] == "train@seq2seq-1" and rec["kind"] == "MLE training"
    assert rec["precision"] == "fp32" and rec["cpu"] and rec["wall_seconds"] >= rec["main_seconds"] >= 0
    assert rec["peak_rss_gb"] > 0


def test_a_failed_stage_writes_none(records, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "prepare")

    def fail():
        raise InputError("params.yaml", "bad")

    with pytest.raises(SystemExit):
        run_stage(fail)
    assert not list(records.iterdir())


def test_a_hand_run_stage_is_named_by_its_command(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert stage_times.stage_name(["/x/stages/generate.py", "pednet", "--seed", "2"]) == "stages.generate pednet --seed 2"


def test_queued_experiments_record_into_their_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("PIPELINE_STAGE_TIMES", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"))
    assert stage_times.records_dir() == (tmp_path / "repo" / ".dvc" / "tmp" / "stage_times").resolve()


@pytest.mark.parametrize(("stage", "kind"), [
    ("fetch", "preprocessing"), ("score_groups", "MSN / matcher"), ("train_history_models@hran-2", "MLE training"),
    ("reference_scores@pednet-1", "reference scores"), ("train_gcl@pednet-3", "GCL fine-tunes"),
    ("train_learner@deeprl-1", "learners"), ("generate_last@pednet_gcl-1", "decoding"),
    ("evaluate_control@gold", "evaluation"), ("report", "report"), ("stages.probe x", "other"),
])
def test_kinds(stage, kind):
    assert stage_times.kind_of(stage) == kind


def test_collect_sums_by_kind_and_pairs_each_gcl_run_with_its_reference(records):
    def write(stage, seconds):
        (records / f"{stage}.json").write_text(json.dumps({"stage": stage, "wall_seconds": seconds}))

    write("train_history@seq2seq_history-1", 100.0)
    write("train_history_models@hran-1", 200.0)
    write("train_gcl@seq2seq_history-1", 120.0)
    write("train_gcl@hran_history-1", 500.0)
    write("generate@pednet-1", 7.5)
    (records / "junk.json").write_text("{not json")
    summary = stage_times.collect(records)
    assert summary["by_kind"]["MLE training"] == {"instances": 2, "wall_seconds": 300.0}
    assert summary["by_kind"]["decoding"]["instances"] == 1
    ratios = stage_times.ratios(summary)
    assert ratios["gcl_run_vs_mle_run_walls"] == {"train_gcl@hran_history-1": 2.5, "train_gcl@seq2seq_history-1": 1.2}
    assert ratios["gcl_run_vs_mle_run_wall"] == 2.5
    assert "| MLE training | 2 | 5.0 |" in "\n".join(stage_times.render(summary))
