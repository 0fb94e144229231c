"""reports/gcl_ablations.md and reports/plots/gcl_group_size.png from fabricated per-seed metrics."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from scipy import stats as scipy_stats

from pipeline.evaluation import paper_results, report
from pipeline.evaluation.metrics import METRIC_KEYS
from pipeline.io import InputError, run_stage, write_json
from tests.prepared import write_params

FULL = "seq2seq_history_gcl"
A = "seq2seq_history_gcl_no_group_wise"
# run -> seed -> (Dist-2, BLEU-1) as fractions; the other columns follow from them (metrics())
RUNS = {
    FULL: {1: (0.0110, 0.100), 2: (0.0120, 0.105), 3: (0.0130, 0.110)},
    FULL + "_last": {1: (0.0100, 0.100), 2: (0.0140, 0.120)},
    A: {1: (0.0100, 0.090), 2: (0.0105, 0.094), 3: (0.0125, 0.098), 4: (0.5, 0.9)},  # seed4: not in `seeds`
    A + "_last": {2: (0.0150, 0.110)},
    "seq2seq_history": {1: (0.0100, 0.100), 2: (0.0100, 0.100)},
    "seq2seq_history_gcl_k1": {3: (0.0090, 0.080)},
}


def metrics(distinct_2: float, bleu_1: float) -> dict:
    values = {k: 0.0 for k in METRIC_KEYS}
    values.update(distinct_1=distinct_2 / 2, distinct_2=distinct_2, distinct_3=2 * distinct_2, bleu_1=bleu_1,
                  bleu_2=bleu_1 / 4, n_examples=3894)  # fmt: skip
    return values


def write_seeds_params(root, seeds=(1, 2, 3)) -> None:
    path = write_params(root)
    params = yaml.safe_load(path.read_text())
    params["seeds"] = list(seeds)
    path.write_text(yaml.safe_dump(params))


@pytest.fixture
def project(tmp_path, monkeypatch):
    for run, seeds in RUNS.items():
        for seed, (d2, b1) in seeds.items():
            write_json(metrics(d2, b1), tmp_path / f"reports/metrics/{run}/seed{seed}.json")
    write_seeds_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _row(lines: list[str], start: str) -> list[str]:
    """The cells of the one table row that starts with ``start``."""
    found = [line for line in lines if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def test_paper_table5_is_the_printed_one():
    assert list(paper_results.GCL_TABLE5) == [run for run, _ in report.GCL_ABLATIONS]
    assert paper_results.GCL_TABLE5[FULL] == {"distinct_2": "5.093", "bleu_1": "13.66"}
    assert paper_results.GCL_TABLE5["seq2seq_history_gcl_no_matching_scores"] == {"distinct_2": "3.809",
                                                                                  "bleu_1": "13.56"}  # fmt: skip
    assert paper_results.paper_fraction(paper_results.GCL_TABLE5, A, "distinct_2") == pytest.approx(0.0207)


def test_paired_difference_by_hand():
    full = {k: metrics(d2, b1) for k, (d2, b1) in RUNS[FULL].items()}
    variant = {k: metrics(d2, b1) for k, (d2, b1) in RUNS[A].items()}
    d = report.paired_difference(variant, full, "bleu_1")
    # seeds 1, 2, 3 pair (seed 4 has no partner): -0.010, -0.011, -0.012
    half = scipy_stats.t.ppf(0.975, 2) * 0.001 / math.sqrt(3)
    assert d["n"] == 3 and d["seeds"] == [1, 2, 3]
    assert d["mean"] == pytest.approx(-0.011) and d["sd"] == pytest.approx(0.001)
    assert d["ci95"] == pytest.approx([-0.011 - half, -0.011 + half])
    one = report.paired_difference({2: metrics(0.0150, 0.11)}, full, "distinct_2")
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.003) and one["ci95"] is None
    assert report.paired_difference({}, full, "distinct_2") is None
    assert [report.fmt_points(v, 3) for v in (-0.001, 0.00024207, -0.0000001)] == [
        "-0.100",
        "+0.024",
        "+0.000",
    ]


def test_stage_renders_tables(project):
    from stages import gcl_ablations as stage

    stage.main([])
    text = (project / "reports/gcl_ablations.md").read_text()
    lines = text.splitlines()
    # Table 5: paper, then ours selected and last step (mean ± sd in percent, seeds)
    assert _row(lines, "| GCL (full) |") == [
        "GCL (full)", f"`{FULL}`", "5.093", "13.66",
        "0.600 ± 0.050", "1.200 ± 0.100", "2.400 ± 0.200", "10.50 ± 0.50", "2.625 ± 0.125", "3",
        "0.600 ± 0.141", "1.200 ± 0.283", "2.400 ± 0.566", "11.00 ± 1.41", "2.750 ± 0.354", "2",
    ]  # fmt: skip
    # (a): seed 4 (not in `seeds`) ignored; its last step has seed 2 only: the value alone
    assert _row(lines, f"| (a) w/o group-wise sampling | `{A}` |") == [
        "(a) w/o group-wise sampling", f"`{A}`", "2.070", "12.87",
        "0.550 ± 0.066", "1.100 ± 0.132", "2.200 ± 0.265", "9.400 ± 0.400", "2.350 ± 0.100", "3",
        "0.750", "1.500", "3.000", "11.00", "2.750", "1",
    ]  # fmt: skip
    not_run = ["not run", "", "", "", "", "0"]
    assert _row(lines, "| (f) w/o matching scores | `")[2:] == ["3.809", "13.56"] + not_run + not_run
    # the MLE baseline: its one checkpoint in both groups
    baseline = _row(lines, "| MLE baseline (no GCL) | `seq2seq_history` |")
    assert baseline[2:4] == ["2.045", "12.04"] and baseline[4:10] == baseline[10:16]
    assert baseline[4:10] == ["0.500 ± 0.000", "1.000 ± 0.000", "2.000 ± 0.000", "10.00 ± 0.00",
                              "2.500 ± 0.000", "2"]  # fmt: skip

    # paired against full GCL: Dist-2 (a) - full = -0.10, -0.15, -0.05 pp; BLEU-1 -1.0, -1.1, -1.2 pp
    t2 = scipy_stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert f"{-0.10 - t2 * 0.05:.3f}" == "-0.224" and f"{-1.10 + t2 * 0.1:.2f}" == "-0.85"
    assert _row(lines, "| (a) w/o group-wise sampling | -3.023 |") == [
        "(a) w/o group-wise sampling", "-3.023", "-0.79",
        "-0.100 [-0.224, +0.024]", "**-1.10 [-1.35, -0.85]**", "3",  # an interval without 0: bold
        "+0.100 (1 seed: no CI)", "-1.00 (1 seed: no CI)", "1",  # last: seed 2, 1.50 - 1.40, 11.0 - 12.0
    ]  # fmt: skip
    assert (
        _row(lines, "| (b) w/o group-wise positive sampling | -2.823 |")[3:]
        == ["not run", "not run", "0"] * 2
    )
    assert "| k = 2 (Figure 3) | — | — | not run | not run | 0 | not run | not run | 0 |" in lines
    # k = 1 has seed 3, the full run seeds 1-3: one pair
    assert _row(lines, "| k = 1 (Figure 3) |")[3:6] == [
        "-0.400 (1 seed: no CI)",
        "-3.00 (1 seed: no CI)",
        "1",
    ]
    assert _row(lines, "| MLE baseline (no GCL) | -3.048 | -1.62 |")[5] == "2"
    assert "an interval containing 0 means no detectable effect" in text.lower()

    # group sizes: k = 3 is the full run, 4 and 5 not run
    assert _row(lines, "| 3 |")[1:] == _row(lines, "| GCL (full) |")[1:2] + _row(lines, "| GCL (full) |")[4:]
    assert _row(lines, "| 1 |")[1:8] == [
        "`seq2seq_history_gcl_k1`",
        "0.450",
        "0.900",
        "1.800",
        "8.000",
        "2.000",
        "1",
    ]
    assert _row(lines, "| 2 |")[2:] == not_run + not_run
    assert _row(lines, "| 4 |") == ["4", "`seq2seq_history_gcl_k4`"] + not_run + not_run
    assert _row(lines, "| 5 |")[1] == "`seq2seq_history_gcl_k5`"
    assert "![Dist-2 and BLEU-1 against the group size k](plots/gcl_group_size.png)" in lines

    # the header: what was run, on what data, with which commands
    assert "(3,894 test examples)" in text and "2,000-dialogue slice" in text
    assert "python -m stages.train_gcl seq2seq_history --seed K --run seq2seq_history_gcl_<v>" in text
    assert (
        "--checkpoint last" in text
        and "python -m stages.evaluate seq2seq_history_gcl_<v>_last --seed K" in text
    )
    assert "`dvc repro`" in text and "30 more GCL fine-tunes" in text
    assert f"`{A}` (3 seeds)" in text and "Not run yet: `seq2seq_history_gcl_no_positive_groups`" in text

    png = (project / "reports/plots/gcl_group_size.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    first = (project / "reports/gcl_ablations.md").read_bytes()
    stage.main([])
    assert (project / "reports/gcl_ablations.md").read_bytes() == first
    assert (project / "reports/plots/gcl_group_size.png").read_bytes() == png


def test_seeds_outside_params_are_ignored(project):
    from stages import gcl_ablations as stage

    write_seeds_params(project, seeds=[1, 2])
    stage.main([])
    lines = (project / "reports/gcl_ablations.md").read_text().splitlines()
    # full GCL over seeds 1, 2 only (Dist-2 1.10, 1.20); k = 1 (seed 3) is now not run
    assert _row(lines, "| GCL (full) |")[5] == "1.150 ± 0.071" and _row(lines, "| GCL (full) |")[9] == "2"
    assert _row(lines, "| 1 |")[2:8] == ["not run", "", "", "", "", "0"]
    assert _row(lines, "| (a) w/o group-wise sampling | -3.023 |")[3] == "-0.125 [-0.443, +0.193]"


def test_nothing_run_yet(tmp_path, monkeypatch):
    from stages import gcl_ablations as stage

    write_seeds_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    stage.main([])
    text = (tmp_path / "reports/gcl_ablations.md").read_text()
    assert "Evaluated: none yet." in text and "(no test examples)" in text
    assert (tmp_path / "reports/plots/gcl_group_size.png").exists()


def test_bad_metrics_files(project, capsys):
    from stages import gcl_ablations as stage

    bad = project / f"reports/metrics/{A}/seed2.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=f"reports/metrics/{A}/seed2.json:1: not JSON"):
        stage.main([])
    bad.write_text(json.dumps({**metrics(0.01, 0.1), "distinct_2": "high"}))
    with pytest.raises(InputError, match=f"{A}/seed2.json: distinct_2: expected a finite number, got 'high'"):
        stage.main([])
    bad.write_text(json.dumps({"bleu_1": 0.1}))
    with pytest.raises(InputError, match="missing metric"):
        stage.main([])
    # from the command line: one line, exit code 2, no traceback, nothing written
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: stage.main([]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: reports/metrics/{A}/seed2.json: missing metric(s) "
    )
    assert not (project / "reports/gcl_ablations.md").exists()


def render(runs: dict, root, monkeypatch) -> list[str]:
    """reports/gcl_ablations.md's lines for ``runs`` (run -> seed -> (Dist-2, BLEU-1)), seeds 1-3."""
    from stages import gcl_ablations as stage

    for run, seeds in runs.items():
        for seed, (d2, b1) in seeds.items():
            write_json(metrics(d2, b1), root / f"reports/metrics/{run}/seed{seed}.json")
    write_seeds_params(root)
    monkeypatch.chdir(root)
    stage.main([])
    return (root / "reports/gcl_ablations.md").read_text().splitlines()


def test_each_generators_gcl_against_its_control(tmp_path, monkeypatch):
    runs = {  # transformer: GCL above its control by 0.2 / 0.3 / 0.2 points of Dist-2 at the last step
        "transformer_history_gcl_last": {1: (0.0070, 0.110), 2: (0.0050, 0.100), 3: (0.0050, 0.090)},
        "transformer_history_gcl_mle_only_last": {1: (0.0050, 0.110), 2: (0.0020, 0.100), 3: (0.0030, 0.090)},
        "transformer_history_gcl_mle_only": {1: (0.0050, 0.110)},  # no GCL selected run: not run
        "hred_history_gcl": {2: (0.0100, 0.100)},
        "hred_history_gcl_mle_only": {2: (0.0090, 0.100), 3: (0.0080, 0.100)},  # one shared seed: no CI
    }
    lines = render(runs, tmp_path, monkeypatch)
    diffs = [0.2, 0.3, 0.2]
    mean, sd = sum(diffs) / 3, math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    half = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    row = _row(lines, "| Transformer (`transformer_history_gcl` − ")
    assert row[1:7] == ["not run"] * 5 + ["0"]
    assert row[8] == f"**+{mean:.3f} [+{mean - half:.3f}, +{mean + half:.3f}]**" and row[12] == "3"
    assert row[11] == "+0.00 [+0.00, +0.00]"  # equal BLEU-1 on every seed
    hred = _row(lines, "| HRED (`hred_history_gcl` − ")
    assert hred[2] == "+0.100 (1 seed: no CI)" and hred[6] == "1" and hred[7:] == ["not run"] * 5 + ["0"]
    assert _row(lines, "| HRAN (")[1:] == (["not run"] * 5 + ["0"]) * 2


def test_default_objective_against_its_alternatives(tmp_path, monkeypatch):
    runs = {
        FULL: {1: (0.0110, 0.100), 2: (0.0120, 0.100)},
        FULL + "_last": {1: (0.0100, 0.100), 2: (0.0140, 0.120)},
        "seq2seq_history_gcl_eq4_last": {1: (0.0120, 0.110), 2: (0.0170, 0.130)},  # no selected decode
        "seq2seq_history_gcl_scratch": {1: (0.0070, 0.100)},  # one checkpoint
    }
    lines = render(runs, tmp_path, monkeypatch)
    default = _row(lines, "| Default: Eq. 4 + 1.0 NLL")
    assert default[1] == f"`{FULL}`" and default[-6:] == ["—"] * 6
    eq4 = _row(lines, "| Eq. 4 alone (no MLE anchor)")
    assert eq4[2] == "not run" and eq4[9] == "1.450 ± 0.354"  # last: Dist-2 1.2, 1.7
    # last step − the default's last step, seeds 1 and 2: Dist-2 +0.2, +0.3 pp (t CI: mean ± 12.706 ×
    # 0.0707 / √2); BLEU-1 +1.0, +1.0 (sd 0: a zero-width interval that excludes 0, in bold)
    assert eq4[-6:] == ["not run", "not run", "0", "+0.250 [-0.385, +0.885]", "**+1.00 [+1.00, +1.00]**", "2"]
    scratch = _row(lines, "| The authors' recipe")
    assert scratch[3] == "0.700" and scratch[8] == "not run"
    assert scratch[-6:-3] == ["-0.400 (1 seed: no CI)", "+0.00 (1 seed: no CI)", "1"]
    assert _row(lines, "| No fine-tune: the MLE reference | `seq2seq_history` |")[2] == "not run"
    assert _row(lines, "| The same fine-tune with MLE alone")[1] == "`seq2seq_history_gcl_mle_only`"
