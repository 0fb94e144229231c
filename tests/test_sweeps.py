"""Sweep queueing and collection (pipeline.sweeps) without running experiments."""

from __future__ import annotations

import csv

import pytest

from pipeline import sweeps

BASE = {"pednet": {"k": 15, "gamma": 0.5}, "gcl": {"k": 3}}


def fake_read(available: dict):
    """A metrics reader over {rev: persona_f1}; other revs are missing experiments."""
    def read(path, rev):
        assert path == "reports/metrics/pednet.json"
        if rev not in available:
            return None
        return {k: available[rev] for k in sweeps.COLUMNS}
    return read


def test_points_take_the_baseline_value_from_head_and_the_rest_from_experiments():
    rows = sweeps.points("k", BASE, fake_read({"HEAD": 0.15, "sweep-k-1": 0.01, "sweep-k-20": 0.2}))
    assert [r["value"] for r in rows] == [1, 5, 10, 15, 20]
    assert [r["source"] for r in rows] == ["sweep-k-1", "sweep-k-5", "sweep-k-10", "HEAD", "sweep-k-20"]
    assert [r.get("persona_f1") for r in rows] == [0.01, None, None, 0.15, 0.2]


def test_collect_writes_csv_png_and_table_and_is_deterministic(tmp_path):
    read = fake_read({"HEAD": 0.15, "sweep-k-1": 0.01, "sweep-k-5": 0.05})
    sweeps.collect(["k"], tmp_path, BASE, read)
    with open(tmp_path / "sweeps" / "k.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["value"] for r in rows] == ["1", "5", "15"]  # points not run are left out of the plot data
    assert float(rows[2]["persona_f1"]) == 0.15 and rows[2]["source"] == "HEAD"
    md = (tmp_path / "sweeps.md").read_text()
    assert md.count("not run") == 2 * len(sweeps.COLUMNS) and "| 15 | 0.1500" in md
    png = (tmp_path / "sweeps" / "k.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    sweeps.collect(["k"], tmp_path, BASE, read)
    assert (tmp_path / "sweeps" / "k.png").read_bytes() == png


def test_queue_skips_the_baseline_value(monkeypatch):
    calls = []
    monkeypatch.setattr(sweeps, "_dvc", lambda *a, **kw: calls.append(a))
    monkeypatch.setattr("dvc.api.params_show", lambda *a, **kw: BASE)
    assert sweeps.queue(["gamma"]) == [f"sweep-gamma-{v}" for v in (0.1, 0.3, 0.7, 0.9)]
    assert calls[0] == ("exp", "run", "--queue", "--name", "sweep-gamma-0.1", "-S", "pednet.gamma=0.1",
                        "evaluate@pednet")
    calls.clear()
    assert sweeps.queue(["group_size"], values=[1, 3]) == ["sweep-group_size-1"]
    assert calls[0][-1] == "evaluate@seq2seq_gcl"


def test_unknown_sweep_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        sweeps.main(["queue", "beta"])
    assert e.value.code == 2 and "unknown sweep 'beta'" in capsys.readouterr().err
