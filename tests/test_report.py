"""reports/results.md from fabricated metrics and generations."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import paper_results, report
from pipeline.io import InputError, write_json, write_parquet
from pipeline.metrics import METRIC_KEYS
from pipeline.schema import GENERATIONS, SILENCE
from tests.prepared import write_params

PERSONA = ["i have a big dog", "i play the guitar", "i live near the beach"]


def fake_metrics(scale: float) -> dict:
    values = {k: 0.0123 * scale for k in METRIC_KEYS}
    values.update(entropy_1=6.5 * scale, entropy_2=10.25 * scale, n_examples=5)
    return values


def fake_generations(model: str, selected: list[int | None]) -> pa.Table:
    ids = [f"test-00000-{t:02d}" for t in range(5)]
    contexts = [SILENCE, "do you have pets ?", "what do you do ?", "where do you live ?", "cool !"]
    return pa.Table.from_pydict(
        {
            "example_id": ids,
            "persona": [PERSONA] * 5,
            "context": contexts,
            "reference": [f"reference {t}" for t in range(5)],
            "hypothesis": [f"{model} says {t} | pipe" if t else "" for t in range(5)],
            "selected_persona": selected,
        },
        schema=GENERATIONS,
    )


@pytest.fixture
def project(tmp_path, monkeypatch):
    """seq2seq and pednet evaluated; every other model of report.models not run."""
    write_json(fake_metrics(1.0), tmp_path / "reports/metrics/seq2seq.json")
    write_json(fake_metrics(2.0), tmp_path / "reports/metrics/pednet.json")
    write_parquet(fake_generations("seq2seq", [None] * 5), tmp_path / "reports/generations/seq2seq.parquet")
    write_parquet(
        fake_generations("pednet", [0, 1, 2, 0, 1]), tmp_path / "reports/generations/pednet.parquet"
    )
    write_params(tmp_path, fetch={"source": "../shared/data/personachat"}, report={"case_studies": 2})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_formats_follow_the_papers():
    # GCL prints about four significant digits, at most three decimals
    assert [report.fmt_percent_like_gcl(v) for v in (12.04, 3.995, 0.882, 0.231, 12.0, 10.81, 0.0)] == [
        "12.04", "3.995", "0.882", "0.231", "12.00", "10.81", "0.000",
    ]  # fmt: skip
    assert report.fmt_fraction(0.0367) == "0.037"


def test_paper_numbers_are_consistent():
    # PEDNet's F1 is 2RP/(R+P) of the printed R and P in every row (to the printed precision)
    for model, row in paper_results.PEDNET_TABLE2.items():
        r, p = float(row["persona_recall"]), float(row["persona_precision"])
        assert abs(2 * r * p / (r + p) - float(row["persona_f1"])) < 0.0011, model
    assert paper_results.paper_fraction(paper_results.GCL_TABLE2A, "seq2seq", "bleu_1") == pytest.approx(
        0.1204
    )
    assert paper_results.paper_fraction(paper_results.GCL_TABLE2A, "seq2seq", "entropy_1") == pytest.approx(
        6.891
    )
    assert paper_results.paper_fraction(paper_results.PEDNET_TABLE2, "pednet", "persona_f1") == pytest.approx(
        0.109
    )
    assert paper_results.paper_fraction(paper_results.PEDNET_TABLE2, "pednet", "bleu_1") is None


def test_stage_renders_tables_case_study_and_not_run(project):
    from stages import report as stage

    stage.main()
    text = (project / "reports/results.md").read_text()
    lines = text.splitlines()
    # PEDNet layout: fractions; paper row then ours
    assert "| Model | Source | Distinct-1 | Distinct-2 | P-R | P-P | P-F1 | P-Cover |" in lines
    assert "| Seq2Seq | *paper* | 0.018 | 0.064 | 0.048 | 0.030 | 0.037 | 0.016 |" in lines
    assert "| Seq2Seq | **ours** | 0.012 | 0.012 | 0.012 | 0.012 | 0.012 | 0.012 |" in lines
    assert "| PEDNet | **ours** | 0.025 | 0.025 | 0.025 | 0.025 | 0.025 | 0.025 |" in lines
    # GCL layout: percent (0.0123 -> 1.230), entropies in bits
    assert "| Seq2Seq + GCL | *paper* | 13.66 | 4.916 | 1.597 | 0.612 |" in text
    assert "| Seq2Seq | **ours** | " + " | ".join(["1.230"] * 11) + " | 6.500 | 10.25 |" in lines
    assert "| Transformer | *paper* | 11.46 |" in text
    # models without metrics: "not run", in both tables
    assert text.count("| GPMN | **ours** | not run |") == 2
    assert "Not run yet: GPMN, PostKS, Seq2Seq + GCL, PEDNet + GCL." in text
    # the data each was measured on
    assert (
        "full Persona-Chat" in text and "`../shared/data/personachat`" in text and "(5 test examples)" in text
    )
    # case study: two contexts, never the opening turn; selections shown as persona text
    assert text.count("Context: ") == 2 and "opens the dialogue" not in text
    gens = {m: report.load_generations(f"reports/generations/{m}.parquet") for m in ("seq2seq", "pednet")}
    for example_id in report.pick_cases(gens, 2):
        t = int(example_id[-2:])
        sel = [0, 1, 2, 0, 1][t]
        # the response (its pipe escaped) and the persona sentence PEDNet chose
        assert f"| PEDNet | pednet says {t} \\| pipe | {sel + 1}. {PERSONA[sel]} |" in lines
    assert "| Seq2Seq | seq2seq says" in text and "| — |" in text  # no selection
    assert "| GPMN | not run |  |" in text


def test_case_study_pick_is_deterministic_and_can_be_fixed(project):
    gens = {m: report.load_generations(f"reports/generations/{m}.parquet") for m in ("seq2seq", "pednet")}
    picked = report.pick_cases(gens, 3)
    assert picked == report.pick_cases(dict(reversed(gens.items())), 3)
    assert len(picked) == 3 and "test-00000-00" not in picked  # the SILENCE turn is skipped
    assert report.pick_cases(gens, 3, ["test-00000-00"]) == ["test-00000-00"]
    with pytest.raises(InputError, match="case_ids"):
        report.pick_cases(gens, 3, ["test-99999-00"])
    assert report.pick_cases({"seq2seq": None}, 3) == []


def test_nothing_run_yet_renders(tmp_path, monkeypatch):
    from stages import report as stage

    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    stage.main()
    text = Path("reports/results.md").read_text()
    assert "Evaluated: none yet." in text and "No generations yet." in text
    assert "| PEDNet | *paper* | 0.031 | 0.173 | 0.143 | 0.088 | 0.109 | 0.045 |" in text


def test_bad_inputs(project):
    from stages import report as stage

    (project / "reports/metrics/gpmn.json").write_text("{not json")
    with pytest.raises(InputError, match="gpmn.json:1: not JSON"):
        stage.main()
    (project / "reports/metrics/gpmn.json").write_text(json.dumps({"bleu_1": 0.1}))
    with pytest.raises(InputError, match="missing metric"):
        stage.main()
    (project / "reports/metrics/gpmn.json").unlink()
    write_params(project, report={"models": ["pednet", "pednet"]})
    with pytest.raises(InputError, match="without repeats"):
        stage.main()
