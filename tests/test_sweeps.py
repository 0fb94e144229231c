"""Sweep queueing and collection (pipeline.evaluation.sweeps): on fabricated metrics, and one
sweep point run as a real DVC experiment on PEDNet's part of the DAG."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

from pipeline.evaluation import sweeps
from pipeline.io import InputError
from tests.dvc_project import env, make_project, run

BASE = {"seeds": [1, 2, 3], "pednet": {"k": 15, "gamma": 0.5}, "gcl": {"k": 3}}


def fake_read(available: dict, run: str = "pednet"):
    """A metrics reader over {rev: {seed: persona_f1}} (every column takes that value);
    other revs and seeds are missing experiments / files."""
    calls = []

    def read(path, rev):
        calls.append((path, rev))
        prefix, seed_file = path.rsplit("/", 1)
        assert prefix == f"reports/metrics/{run}" and seed_file.startswith("seed") and seed_file.endswith(".json")
        seed = int(seed_file[len("seed"):-len(".json")])
        if seed not in available.get(rev, {}):
            return None
        return {**{k: available[rev][seed] for k in sweeps.COLUMNS}, "n_examples": 40}

    read.calls = calls
    return read


def test_targets_are_the_evaluate_stage_of_every_seed():
    assert sweeps.SWEEPS["k"].targets([1, 2, 3]) == ["evaluate@pednet-1", "evaluate@pednet-2", "evaluate@pednet-3"]
    assert sweeps.SWEEPS["group_size"].targets([4]) == ["evaluate@seq2seq_history_gcl-4"]
    assert sweeps.SWEEPS["gamma"].metrics_path(2) == "reports/metrics/pednet/seed2.json"


def test_points_take_the_baseline_value_from_head_and_the_rest_from_experiments():
    read = fake_read({"HEAD": {1: 0.14, 2: 0.15, 3: 0.16}, "sweep-k-1": {1: 0.01, 2: 0.03}, "sweep-k-20": {3: 0.2}})
    rows = sweeps.points("k", BASE, read)
    assert [r["value"] for r in rows] == [1, 5, 10, 15, 20]
    assert [r["source"] for r in rows] == ["sweep-k-1", "sweep-k-5", "sweep-k-10", "HEAD", "sweep-k-20"]
    assert [r["seeds"] for r in rows] == [[1, 2], [], [], [1, 2, 3], [3]]
    assert [r["n_seeds"] for r in rows] == [2, 0, 0, 3, 1]
    assert {(f"reports/metrics/pednet/seed{s}.json", "HEAD") for s in (1, 2, 3)} <= set(read.calls)
    assert "persona_f1" not in rows[1]  # not run: no metrics at all

    head = rows[3]  # 0.14, 0.15, 0.16: sd 0.01, CI mean ± t(0.975, 2) sd / sqrt(3)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert head["persona_f1"] == pytest.approx(0.15)
    assert head["persona_f1_sd"] == pytest.approx(0.01)
    assert head["persona_f1_lo"] == pytest.approx(0.15 - half) and head["persona_f1_hi"] == pytest.approx(0.15 + half)
    one = rows[4]  # a single seed: no spread, the CI collapses to the value
    assert one["distinct_2"] == 0.2 and one["distinct_2_sd"] is None
    assert one["distinct_2_lo"] == one["distinct_2_hi"] == 0.2


def test_seed_with_incomplete_metrics_is_left_out(caplog):
    def read(path, rev):
        if path.endswith("seed2.json"):
            return {"persona_f1": 0.5}  # an older metrics file without the other columns
        return dict.fromkeys(sweeps.COLUMNS, 0.1) if rev == "HEAD" else None

    rows = sweeps.points("gamma", BASE, read)
    head = next(r for r in rows if r["source"] == "HEAD")
    assert head["seeds"] == [1, 3] and head["persona_f1"] == pytest.approx(0.1)
    assert "seed 2 left out" in caplog.text


def test_collect_writes_csv_png_and_table_and_is_deterministic(tmp_path):
    read = fake_read({"HEAD": {1: 0.14, 2: 0.15, 3: 0.16}, "sweep-k-1": {1: 0.01, 2: 0.02, 3: 0.03},
                      "sweep-k-5": {2: 0.05}})
    sweeps.collect(["k"], tmp_path, BASE, read)
    with open(tmp_path / "sweeps" / "k.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    # dvc.yaml's plots read the means by the metric's own name
    for key in ("persona_f1", "persona_coverage", "distinct_2", "bleu_1", "distinct_3"):
        assert {key, f"{key}_sd", f"{key}_lo", f"{key}_hi"} <= set(reader.fieldnames)
    assert "n_seeds" in reader.fieldnames
    assert [r["value"] for r in rows] == ["1", "5", "15"]  # points not run are left out of the plot data
    assert [r["n_seeds"] for r in rows] == ["3", "1", "3"]
    assert float(rows[2]["persona_f1"]) == pytest.approx(0.15) and rows[2]["source"] == "HEAD"
    assert float(rows[2]["distinct_2_sd"]) == pytest.approx(0.01)
    assert float(rows[2]["distinct_2_lo"]) < 0.15 < float(rows[2]["distinct_2_hi"])
    assert rows[1]["bleu_1_sd"] == "" and rows[1]["bleu_1_lo"] == rows[1]["bleu_1_hi"] == rows[1]["bleu_1"]

    md = (tmp_path / "sweeps.md").read_text()
    assert md.count("not run") == 2 * len(sweeps.COLUMNS)
    assert "| 15 | 0.1500 ± 0.0100 |" in md and "| 1, 2, 3 | HEAD |" in md
    assert "| 5 | 0.0500 |" in md and "| 2 | sweep-k-5 |" in md  # one seed: no ± sd
    assert "| none | sweep-k-10 |" in md
    png = (tmp_path / "sweeps" / "k.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    sweeps.collect(["k"], tmp_path, BASE, read)
    assert (tmp_path / "sweeps" / "k.png").read_bytes() == png


def test_collect_with_nothing_run_writes_empty_tables(tmp_path):
    sweeps.collect(["group_size"], tmp_path, BASE, fake_read({}, run="seq2seq_history_gcl"))
    lines = (tmp_path / "sweeps" / "group_size.csv").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("value,source,n_seeds,")
    assert (tmp_path / "sweeps" / "group_size.png").read_bytes().startswith(b"\x89PNG")


def test_queue_skips_the_baseline_value_and_targets_every_seed(monkeypatch):
    calls = []
    monkeypatch.setattr(sweeps, "_dvc", lambda *a, **kw: calls.append(a))
    monkeypatch.setattr("dvc.api.params_show", lambda *a, **kw: BASE)
    assert sweeps.queue(["gamma"]) == [f"sweep-gamma-{v}" for v in (0.1, 0.3, 0.7, 0.9)]
    assert calls[0] == ("exp", "run", "--queue", "--name", "sweep-gamma-0.1", "-S", "pednet.gamma=0.1",
                        "evaluate@pednet-1", "evaluate@pednet-2", "evaluate@pednet-3")
    calls.clear()
    assert sweeps.queue(["group_size"], values=[1, 3]) == ["sweep-group_size-1"]
    assert calls[0][-3:] == ("evaluate@seq2seq_history_gcl-1", "evaluate@seq2seq_history_gcl-2", "evaluate@seq2seq_history_gcl-3")


def test_params_without_seeds_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(sweeps, "_dvc", lambda *a, **kw: pytest.fail("queued without seeds"))
    monkeypatch.setattr("dvc.api.params_show", lambda *a, **kw: {"pednet": {"k": 15}})
    with pytest.raises(InputError, match="seeds: expected a non-empty list of integers"):
        sweeps.queue(["k"])
    with pytest.raises(InputError, match="got \\[\\]"):
        sweeps.points("k", {**BASE, "seeds": []}, fake_read({}))


def test_targets_and_plots_match_dvc_yaml(tmp_path):
    """Every sweep's targets are stages of the seed matrix that write the metrics ``collect``
    reads, and `dvc plots show` draws the collected CSVs' means (dvc.yaml `plots:`)."""
    seeds = [1, 2]
    repo = make_project(tmp_path, params={"seeds": seeds})
    listed = dict(line.split(None, 1) for line in run(["dvc", "stage", "list"], repo).stdout.splitlines())
    for sweep in sweeps.SWEEPS.values():
        for seed, target in zip(seeds, sweep.targets(seeds), strict=True):
            assert sweep.metrics_path(seed) in listed[target], target

    read_by_run = {"pednet": fake_read({"HEAD": {1: 0.1, 2: 0.2}, "sweep-k-1": {1: 0.3, 2: 0.4},
                                        "sweep-gamma-0.1": {2: 0.3}}),
                   "seq2seq_history_gcl": fake_read({"HEAD": {1: 0.1, 2: 0.2}}, run="seq2seq_history_gcl")}

    def read(path, rev):
        return read_by_run[path.split("/")[2]](path, rev)

    sweeps.collect(list(sweeps.SWEEPS), repo / "reports", {**BASE, "seeds": seeds}, read)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, check=False).stdout)
    assert not [e for e in shown.get("errors", []) if e["source"].startswith("reports/sweeps/")]
    expected = {"PEDNet K sweep (PEDNet Table 2)": 2, "PEDNet gamma sweep (PEDNet Figure 2)": 2,
                "GCL group size sweep (GCL Figure 3)": 1}  # points with metrics
    for name, n_points in expected.items():
        values = shown["data"][name][0]["content"]["data"]["values"]
        assert len(values) == 3 * n_points, name  # three metrics per point, drawn as their means
        for v in values:
            assert float(v["dvc_inferred_y_value"]) == pytest.approx(float(v[v["field"]]))
            assert v["field"] in sweeps.COLUMNS


def test_unknown_sweep_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        sweeps.main(["queue", "beta"])
    assert e.value.code == 2 and "unknown sweep 'beta'" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_sweep_point_as_a_dvc_experiment(tmp_path):
    """`dvc exp run -S pednet.k=1` on a sweep's target beside HEAD's committed point, collected
    into the CSV, PNG and table (a real DVC experiment; only the stages upstream of the target
    run, so the project holds PEDNet's part of the DAG, not the whole of it)."""
    from tests.test_full_dag import SEEDS, TINY_DAG

    repo = make_project(tmp_path, params=TINY_DAG)
    targets = sweeps.SWEEPS["k"].targets(SEEDS)
    assert targets == ["evaluate@pednet-1"]
    run(["dvc", "repro", *targets], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    run(["dvc", "exp", "run", "--name", "sweep-k-1", "-S", "pednet.k=1", *targets], repo)
    code = ("from pipeline.evaluation import sweeps; t = sweeps.collect(['k']);"
            "print({r['value']: (r['source'], r['seeds'], r.get('persona_f1')) for r in t['k']})")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    table = (repo / "reports" / "sweeps.md").read_text()
    assert "| 1 | " in table and "sweep-k-1" in table and "| 3 | " in table and "HEAD" in table
    assert (repo / "reports" / "sweeps" / "k.png").stat().st_size > 0
    with open(repo / "reports" / "sweeps" / "k.csv") as f:
        rows = {r["value"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"1", "3"}  # the experiment's point and HEAD's (pednet.k = 3)
    assert rows["3"]["source"] == "HEAD" and rows["1"]["source"] == "sweep-k-1"
    for row in rows.values():  # every seed of the point, summarised
        assert row["n_seeds"] == str(len(SEEDS))
        assert float(row["persona_f1_lo"]) <= float(row["persona_f1"]) <= float(row["persona_f1_hi"])
