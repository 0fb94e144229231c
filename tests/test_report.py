"""reports/results.md, summary.json and claims.json from fabricated per-seed metrics and generations."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.evaluation import paper_results, report, stats
from pipeline.evaluation.metrics import METRIC_KEYS, read_generations
from pipeline.io import InputError, write_json, write_parquet
from pipeline.schema import GENERATIONS_LEGACY, SILENCE
from tests.prepared import write_params

PERSONA = ["i have a big dog", "i play the guitar", "i live near the beach"]
# run -> seed -> scale of its fake metrics; postks and seq2seq_history_gcl are not run
SEEDS = {
    "seq2seq": {1: 1.0, 2: 1.1, 3: 1.2},
    "gpmn": {1: 1.5},
    "pednet": {1: 2.0, 2: 2.0},
    "pednet_gcl": {1: 3.0},
}


def fake_metrics(scale: float) -> dict:
    values = {k: 0.0123 * scale for k in METRIC_KEYS}
    values.update(entropy_1=6.5 * scale, entropy_2=10.25 * scale, n_examples=5)
    return values


def fake_generations(model: str, selected: list[int | None], seed: int = 1) -> pa.Table:
    ids = [f"test-00000-{t:02d}" for t in range(5)]
    contexts = [SILENCE, "do you have pets ?", "what do you do ?", "where do you live ?", "cool !"]
    return pa.Table.from_pydict(
        {
            "example_id": ids,
            "persona": [PERSONA] * 5,
            "context": contexts,
            "reference": [f"reference {t} about my dog" for t in range(5)],
            "hypothesis": [f"{model} s{seed} says {t} | pipe" if t else "" for t in range(5)],
            "selected_persona": selected,
        },
        schema=GENERATIONS_LEGACY,  # without log_p_own / log_p_shuffled, as older files
    )


def write_report_params(root: Path, seeds=(1, 2, 3), **sections) -> None:
    """params.yaml with a top-level `seeds` list (write_params merges sections only)."""
    path = write_params(root, **sections)
    params = yaml.safe_load(path.read_text())
    params["seeds"] = list(seeds)
    path.write_text(yaml.safe_dump(params))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The runs of SEEDS and both controls; a stale seed4 of seq2seq, not in `seeds`."""
    for model, scales in SEEDS.items():
        for seed, scale in scales.items():
            write_json(fake_metrics(scale), tmp_path / f"reports/metrics/{model}/seed{seed}.json")
            selected = [0, 1, 2, 0, 1] if model.startswith("pednet") else [None] * 5
            write_parquet(fake_generations(model, selected, seed),
                          tmp_path / f"reports/generations/{model}/seed{seed}.parquet")  # fmt: skip
    write_json(fake_metrics(100.0), tmp_path / "reports/metrics/seq2seq/seed4.json")
    write_json(fake_metrics(4.0), tmp_path / "reports/metrics/gold/control.json")
    write_json(fake_metrics(0.4), tmp_path / "reports/metrics/constant/control.json")
    (tmp_path / "data/persona_idf").mkdir(parents=True)
    (tmp_path / "data/persona_idf/idf.tsv").write_text("dog\t0.16\n", encoding="utf-8")
    write_report_params(
        tmp_path, fetch={"source": "../shared/data/personachat"}, report={"case_studies": 2, "bootstrap": 200}
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_formats_follow_the_papers():
    # GCL prints about four significant digits, at most three decimals
    assert [report.fmt_percent_like_gcl(v) for v in (12.04, 3.995, 0.882, 0.231, 12.0, 10.81, 0.0)] == [
        "12.04", "3.995", "0.882", "0.231", "12.00", "10.81", "0.000",
    ]  # fmt: skip
    assert report.fmt_fraction(0.0367) == "0.037"
    # mean ± sd: the sd to the decimals of the mean; one seed: the mean alone
    one = {"mean": 0.0367, "sd": None}
    assert (
        report.fmt_summary("persona_f1", {"mean": 0.0367, "sd": 0.00412}, report._pednet_unit)
        == "0.037 ± 0.004"
    )
    assert report.fmt_summary("persona_f1", one, report._pednet_unit) == "0.037"
    assert report.fmt_summary("bleu_1", {"mean": 0.1204, "sd": 0.0031}, report._gcl_unit) == "12.04 ± 0.31"
    assert report.fmt_summary("entropy_2", {"mean": 10.81, "sd": 0.1}, report._gcl_unit) == "10.81 ± 0.10"
    # differences: signed, three significant digits
    assert [report.fmt_signed(v) for v in (0.0148, -0.00063, 0.25, 0.0)] == [
        "+0.0148",
        "-0.000630",
        "+0.250",
        "0.000",
    ]


def test_paper_numbers_are_consistent():
    # PEDNet's F1 is 2RP/(R+P) of the printed R and P in every row (to the printed precision)
    for model, row in paper_results.PEDNET_TABLE2.items():
        r, p = float(row["persona_recall"]), float(row["persona_precision"])
        assert abs(2 * r * p / (r + p) - float(row["persona_f1"])) < 0.0011, model
    assert paper_results.paper_fraction(paper_results.GCL_TABLE2A, "seq2seq_history", "bleu_1") == pytest.approx(
        0.1204
    )
    assert paper_results.paper_fraction(paper_results.GCL_TABLE2A, "seq2seq_history", "entropy_1") == pytest.approx(
        6.891
    )
    assert paper_results.paper_fraction(paper_results.PEDNET_TABLE2, "pednet", "persona_f1") == pytest.approx(
        0.109
    )
    assert paper_results.paper_fraction(paper_results.PEDNET_TABLE2, "pednet", "bleu_1") is None


def test_gcl_paper_tables_round_trip_through_paper_fraction():
    """Every printed value of GCL Table 2(a) and Table 3: percent -> fraction (entropies: bits, as
    printed) -> the report's unit prints the paper's string again."""
    gcl_keys = [key for _, key in report.GCL_COLUMNS]
    tables = {"2a": paper_results.GCL_TABLE2A, "3": paper_results.GCL_TABLE3}
    assert list(tables["2a"]) == [f"{g}_history{s}" for g in ("seq2seq", "hred", "transformer", "hran")
                                  for s in ("", "_gcl")]  # fmt: skip
    assert list(tables["3"]) == [f"seq2seq_history_{x}" for x in
                                 ("adversarial_last", "mmi", "deeprl", "cvae", "dialogwae", "gcl")]  # fmt: skip
    for name, table in tables.items():
        for run, row in table.items():
            assert list(row) == sorted(row, key=gcl_keys.index) and set(row) == set(gcl_keys), (name, run)
            for key, printed in row.items():
                value = paper_results.paper_fraction(table, run, key)
                expected = float(printed) if key in paper_results.BITS else float(printed) / 100
                assert value == pytest.approx(expected, rel=1e-12), (name, run, key)
                scaled, decimals = report._gcl_unit(key, value)
                assert f"{scaled:.{decimals}f}" == printed, (name, run, key)
    # as printed in methods.md (a sample of each new row)
    assert tables["2a"]["hred_history"]["distinct_2"] == "2.546"
    assert tables["2a"]["hred_history_gcl"]["distinct_3"] == "11.22"
    assert tables["2a"]["hran_history"]["coherence"] == "40.22"
    assert tables["2a"]["hran_history_gcl"]["distinct_2"] == "4.974"
    assert tables["2a"]["transformer_history_gcl"]["distinct_2"] == "4.562"
    assert paper_results.paper_fraction(tables["3"], "seq2seq_history_adversarial_last", "distinct_2") == pytest.approx(
        0.03357
    )
    assert paper_results.paper_fraction(tables["3"], "seq2seq_history_mmi", "bleu_1") == pytest.approx(0.1403)
    assert paper_results.paper_fraction(tables["3"], "seq2seq_history_deeprl", "distinct_2") == pytest.approx(0.03838)
    assert paper_results.paper_fraction(tables["3"], "seq2seq_history_cvae", "distinct_2") == pytest.approx(0.02326)
    assert paper_results.paper_fraction(tables["3"], "seq2seq_history_dialogwae", "entropy_2") == pytest.approx(11.09)
    assert tables["3"]["seq2seq_history_gcl"] == tables["2a"]["seq2seq_history_gcl"]
    assert paper_results.paper_fraction(tables["3"], "seq2seq_history_mmi_antilm", "bleu_1") is None  # no paper row


def test_every_run_of_the_gcl_tables_is_in_the_report_with_a_name():
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text(encoding="utf-8"))
    models = params["report"]["models"]
    runs = [*paper_results.GCL_TABLE2A, *report.GCL_TABLE3_RUNS]
    assert [r for r in runs if r not in models] == []
    named = set(models) | {r for c in stats.CLAIMS for r in (c.lower, c.higher)}
    assert sorted(r for r in named if r not in report.DISPLAY) == []
    assert {c.paper for c in stats.CLAIMS} <= set(report.PAPERS)


# runs of the GCL tables present in `gcl_project` (run -> seed -> scale); the others are not run
GCL_SEEDS = {
    "hred_history": {1: 1.0, 2: 1.1, 3: 1.2},
    "hred_history_gcl": {1: 2.0},
    "seq2seq_history_gcl": {1: 3.0, 2: 3.0},
    "seq2seq_history_cvae": {1: 0.5},
    "seq2seq_history_mmi_antilm": {2: 1.5},
}


@pytest.fixture
def gcl_project(project):
    for model, scales in GCL_SEEDS.items():
        for seed, scale in scales.items():
            write_json(fake_metrics(scale), project / f"reports/metrics/{model}/seed{seed}.json")
            write_parquet(fake_generations(model, [None] * 5, seed),
                          project / f"reports/generations/{model}/seed{seed}.parquet")  # fmt: skip
    return project


def _section(text: str, heading: str) -> list[str]:
    """The lines of the section ``## heading...`` up to the next ``## ``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _rows(section: list[str]) -> list[tuple[str, str]]:
    """(model, source) of each table row."""
    rows = [line.split(" | ") for line in section if line.startswith("| ") and not line.startswith("| Model |")]
    return [(cells[0][2:], cells[1]) for cells in rows]


def test_gcl_tables_with_some_runs_present_and_others_not(gcl_project):
    from stages import report as stage

    stage.main()
    text = (gcl_project / "reports/results.md").read_text()
    ours = " | ".join(["1.353 ± 0.123"] * 11) + " | 7.150 ± 0.650 | 11.28 ± 1.02 |"  # scales 1.0, 1.1, 1.2
    not_run = " | not run |" + "  |" * (len(report.GCL_COLUMNS) - 1)

    table2a = _section(text, "GCL Table 2(a)")
    rows = _rows(table2a)
    # all eight paper rows, each followed by ours; then the runs outside the paper's table
    generators = [(name, run) for name, run in (("Seq2Seq", "seq2seq_history"), ("HRED", "hred_history"),
                  ("Transformer", "transformer_history"), ("HRAN", "hran_history"))]  # fmt: skip
    expected = []
    for name, run in generators:
        for suffix, label in (("", ""), ("_gcl", " + GCL")):
            source = {"hred_history": "**ours** (3 seeds)", "hred_history_gcl": "**ours** (1 seed)",
                      "seq2seq_history_gcl": "**ours** (2 seeds)"}.get(run + suffix, "**ours**")  # fmt: skip
            expected += [(f"{name} (multi-turn){label}", "*paper*"), (f"{name} (multi-turn){label}", source)]
    assert rows[:16] == expected
    assert "| HRED (multi-turn) | *paper* | 12.41 | 3.836 | 0.846 | 0.236 | 0.474 | 2.546 | 6.127 | 36.52 | " \
        "28.37 | 64.12 | 39.08 | 6.792 | 10.66 |" in table2a
    assert "| HRAN (multi-turn) + GCL | *paper* | 13.43 | 4.503 | 1.063 | 0.351 | 0.771 | 4.974 | 12.38 | 39.04 | " \
        "30.08 | 64.48 | 46.63 | 6.942 | 10.87 |" in table2a
    assert "| HRED (multi-turn) | **ours** (3 seeds) | " + ours in table2a
    assert "| HRED (multi-turn) + GCL | **ours** (1 seed) | " + " | ".join(["2.460"] * 11) + " | 13.00 | 20.50 |" in table2a
    assert "| HRAN (multi-turn) | **ours**" + not_run in table2a
    assert "| Transformer (multi-turn) + GCL | **ours**" + not_run in table2a
    # the Table 3 learners have their own table
    assert not any("CVAE" in model or "MMI" in model or "Adversarial" in model for model, _ in rows)

    table3 = _section(text, "GCL Table 3")
    rows = _rows(table3)
    assert rows == [
        ("Adversarial (Seq2Seq, multi-turn), last step", "*paper*"),
        ("Adversarial (Seq2Seq, multi-turn), last step", "**ours**"),
        ("MMI-bidi (Seq2Seq, multi-turn)", "*paper*"), ("MMI-bidi (Seq2Seq, multi-turn)", "**ours**"),
        ("DeepRL (Seq2Seq, multi-turn)", "*paper*"), ("DeepRL (Seq2Seq, multi-turn)", "**ours**"),
        ("CVAE (Seq2Seq, multi-turn)", "*paper*"), ("CVAE (Seq2Seq, multi-turn)", "**ours** (1 seed)"),
        ("DialogWAE (Seq2Seq, multi-turn)", "*paper*"), ("DialogWAE (Seq2Seq, multi-turn)", "**ours**"),
        ("Seq2Seq (multi-turn) + GCL", "*paper*"), ("Seq2Seq (multi-turn) + GCL", "**ours** (2 seeds)"),
        ("MMI-antiLM (Seq2Seq, multi-turn)", "**ours** (1 seed)"),  # no paper row
        ("Seq2Seq (multi-turn)", "**ours**"),  # the MLE model, not run here
        ("Gold (reference)", "*control*"), ("Constant reply", "*control*"),
    ]  # fmt: skip
    assert "| MMI-bidi (Seq2Seq, multi-turn) | *paper* | 14.03 | 4.646 | 1.334 | 0.502 | 0.473 | 2.443 | 5.515 | " \
        "39.34 | 30.92 | 64.84 | 45.16 | 6.874 | 10.65 |" in table3
    assert "| DialogWAE (Seq2Seq, multi-turn) | *paper* | 11.43 | 2.926 | 0.568 | 0.144 | 0.994 | 5.080 | 9.928 | " \
        "38.68 | 28.70 | 63.39 | 41.06 | 7.009 | 11.09 |" in table3
    assert "| CVAE (Seq2Seq, multi-turn) | **ours** (1 seed) | " + " | ".join(["0.615"] * 11) + " | 3.250 | 5.125 |" \
        in table3
    assert "| DeepRL (Seq2Seq, multi-turn) | **ours**" + not_run in table3

    # claims: computed where both runs have generations, "not run" otherwise
    claims = {c["id"]: c for c in json.loads((gcl_project / "reports/claims.json").read_text())}
    assert list(claims) == [c.id for c in stats.CLAIMS]
    hred = claims["gcl_table2a:distinct_2:hred_history<hred_history_gcl"]
    assert hred["holds"] != stats.NOT_RUN and hred["n_seeds"] == {"lower": 1, "higher": 1}
    assert claims["gcl_table2a:bleu_1:hran_history<hran_history_gcl"]["holds"] == stats.NOT_RUN
    assert claims["gcl_table2a:bleu_1:hran_history<hran_history_gcl"]["n_seeds"] == {"lower": 0, "higher": 0}
    cvae = claims["gcl_table3:distinct_2:seq2seq_history_cvae<seq2seq_history_gcl"]
    assert cvae["holds"] != stats.NOT_RUN and cvae["n_seeds"] == {"lower": 1, "higher": 1}
    assert claims["gcl_table3:bleu_1:seq2seq_history_mmi_antilm<seq2seq_history_gcl"]["n_seeds"] == {
        "lower": 1, "higher": 1}  # fmt: skip
    mmi = claims["gcl_table3:bleu_1:seq2seq_history_gcl<seq2seq_history_mmi"]  # the paper prints MMI above
    assert mmi["holds"] == stats.NOT_RUN and mmi["n_seeds"] == {"lower": 2, "higher": 0}
    lines = text.splitlines()
    assert any(line.startswith("| CVAE (Seq2Seq, multi-turn) < Seq2Seq (multi-turn) + GCL on Dist-2 (GCL Table 3) | ")
               and not line.endswith("| not run | 1 / 2 |") for line in lines)  # fmt: skip
    assert ("| Seq2Seq (multi-turn) + GCL < MMI-bidi (Seq2Seq, multi-turn) on BLEU-1 (GCL Table 3) "
            "|  |  |  | not run | 2 / 0 |") in lines
    assert ("| HRAN (multi-turn) < HRAN (multi-turn) + GCL on Dist-3 (GCL Table 2(a)) |  |  |  | not run | 0 / 0 |"
            in lines)


def test_stage_renders_tables_claims_case_study_and_not_run(project):
    from stages import report as stage

    stage.main()
    text = (project / "reports/results.md").read_text()
    lines = text.splitlines()
    # PEDNet layout: fractions; paper row, then ours as mean ± sd over the seeds present
    assert "| Model | Source | Distinct-1 | Distinct-2 | P-R | P-P | P-F1 | P-Cover |" in lines
    assert "| Seq2Seq | *paper* | 0.018 | 0.064 | 0.048 | 0.030 | 0.037 | 0.016 |" in lines
    # seeds 1.0, 1.1, 1.2 x 0.0123: mean 0.01353, sd 0.00123 (seed4 is not in `seeds`)
    assert "| Seq2Seq | **ours** (3 seeds) | " + " | ".join(["0.014 ± 0.001"] * 6) + " |" in lines
    assert "| PEDNet | **ours** (2 seeds) | " + " | ".join(["0.025 ± 0.000"] * 6) + " |" in lines
    assert "| PEDNet + GCL | **ours** (1 seed) | " + " | ".join(["0.037"] * 6) + " |" in lines
    # the controls, in every table of metrics
    assert "| Gold (reference) | *control* | " + " | ".join(["0.049"] * 6) + " |" in lines
    assert "| Constant reply | *control* | " + " | ".join(["0.005"] * 6) + " |" in lines
    assert text.count("| Gold (reference) | *control* |") == 4
    # GCL layout: percent (1.353 ± 0.123), entropies in bits (7.150 ± 0.650)
    assert "| Seq2Seq (multi-turn) + GCL | *paper* | 13.66 | 4.916 | 1.597 | 0.612 |" in text
    assert (
        "| Seq2Seq | **ours** (3 seeds) | " + " | ".join(["1.353 ± 0.123"] * 11) + " | 7.150 ± 0.650 |"
        in text
    )
    assert "| Transformer (multi-turn) | *paper* | 11.46 |" in text
    # not run: in both papers' tables, the persona control and the shuffled-context diagnostic
    assert text.count("| PostKS | **ours** | not run |") == 4
    # metrics without query_gain (generations older than the log-prob columns): "—"
    assert "| Seq2Seq | **ours** (3 seeds) | — | — | — |" in text
    assert (
        "Evaluated: Seq2Seq (3 seeds), GPMN (1 seed), PEDNet (2 seeds), PEDNet + GCL (1 seed). "
        "Not run yet: PostKS, Seq2Seq (multi-turn), Seq2Seq (multi-turn) + GCL, "
        "Seq2Seq (multi-turn) + GCL, last step, PEDNet + GCL, last step, HRED (multi-turn), HRED (multi-turn) + GCL, "
        "Transformer (multi-turn), Transformer (multi-turn) + GCL, Transformer (multi-turn) + GCL, last step, "
        "HRAN (multi-turn), HRAN (multi-turn) + GCL, HRAN (multi-turn) + GCL, last step, "
        "HRED (multi-turn) + GCL, last step, Adversarial (Seq2Seq, multi-turn), last step, MMI-bidi (Seq2Seq, multi-turn), "
        "MMI-antiLM (Seq2Seq, multi-turn), DeepRL (Seq2Seq, multi-turn), CVAE (Seq2Seq, multi-turn), "
        "DialogWAE (Seq2Seq, multi-turn)." in text
    )
    # the shuffled-persona control: every run and control
    assert "| Model | Source | P-F1 | P-F1 shuffled | P-F1 gain | P-Cover | P-Cover shuffled |" in lines
    assert "| GPMN | **ours** (1 seed) | 0.018 | 0.018 | 0.018 | 0.018 | 0.018 |" in lines
    # the claims: computed where both runs have generations, else "not run"
    assert "| Claim | Difference | 95% CI | p | Holds | Seeds (lower / higher) |" in lines
    assert "| GPMN < PostKS on P-F1 (PEDNet Table 2) |  |  |  | not run | 1 / 0 |" in lines
    claimed = [line for line in lines if line.startswith("| Seq2Seq < GPMN on P-F1 (PEDNet Table 2) | ")]
    assert len(claimed) == 1 and claimed[0].endswith(" | 1 / 1 |") and "not run" not in claimed[0]
    assert "| PEDNet < PEDNet + GCL on Dist-2 (GCL Table 2(a)) | " in text and "200 replicates" in text
    # the data each was measured on
    assert (
        "full Persona-Chat" in text and "`../shared/data/personachat`" in text and "(5 test examples)" in text
    )
    # case study: seed 1's responses; two contexts, never the opening turn
    assert "Every model's responses are from its seed1 generations" in text
    assert text.count("Context: ") == 2 and "opens the dialogue" not in text
    gens = {m: report.by_example(read_generations(f"reports/generations/{m}/seed1.parquet")) for m in SEEDS}
    for example_id in report.pick_cases(gens, 2):
        t = int(example_id[-2:])
        sel = [0, 1, 2, 0, 1][t]
        # the response (its pipe escaped) and the persona sentence PEDNet chose
        assert f"| PEDNet | pednet s1 says {t} \\| pipe | {sel + 1}. {PERSONA[sel]} |" in lines
    assert "| Seq2Seq | seq2seq s1 says" in text and "| — |" in text  # no selection
    assert "| PostKS | not run |  |" in text


def test_stage_writes_summary_and_claims_deterministically(project):
    from stages import report as stage

    stage.main()
    summary = json.loads((project / "reports/summary.json").read_text())
    assert sorted(summary) == ["constant", "gold", "gpmn", "pednet", "pednet_gcl", "seq2seq"]
    assert set(summary["seq2seq"]) == set(METRIC_KEYS) | {"n_examples", "distinct_replies", "top_reply_share"}
    expected = stage.portable(stats.summarize([0.0123 * s for s in (1.0, 1.1, 1.2)]))
    assert summary["seq2seq"]["persona_f1_gain"] == expected  # JSON keeps the 12 digits exactly
    assert summary["seq2seq"]["persona_f1_gain"]["n_seeds"] == 3
    assert summary["gold"]["bleu_1"] == {"mean": pytest.approx(0.0492), "sd": None,
                                         "ci95": [pytest.approx(0.0492)] * 2, "n_seeds": 1}  # fmt: skip

    claims = {c["id"]: c for c in json.loads((project / "reports/claims.json").read_text())}
    assert list(claims) == [c.id for c in stats.CLAIMS]
    done = claims["gcl_table2a:distinct_1:pednet<pednet_gcl"]
    assert (
        done["n_seeds"] == {"lower": 1, "higher": 1} and done["n_examples"] == 5 and done["bootstrap"] == 200
    )  # PEDNet's 2 seeds and PEDNet + GCL's 1: compared on the seed both have
    assert done["paired_seeds"] == [1]
    # every seed: 4 replies "<model> s<k> says <t> | pipe" (an empty one), 16 unigrams, 8 unique
    assert done["difference"] == 0.0 and done["holds"] == stats.NOT_SIGNIFICANT
    assert claims["pednet_table2:persona_f1:seq2seq<gpmn"]["n_seeds"] == {"lower": 1, "higher": 1}
    assert claims["pednet_table2:persona_coverage:gpmn<postks"]["holds"] == stats.NOT_RUN
    assert claims["gcl_table2a:bleu_4:seq2seq_history<seq2seq_history_gcl"]["n_seeds"] == {"lower": 0, "higher": 0}

    outputs = ["reports/summary.json", "reports/claims.json", "reports/results.md"]
    first = [(project / f).read_bytes() for f in outputs]
    stage.main()
    assert [(project / f).read_bytes() for f in outputs] == first


def test_case_study_pick_is_deterministic_and_can_be_fixed(project):
    gens = {m: report.by_example(read_generations(f"reports/generations/{m}/seed1.parquet")) for m in SEEDS}
    picked = report.pick_cases(gens, 3)
    assert picked == report.pick_cases(dict(reversed(gens.items())), 3)
    assert len(picked) == 3 and "test-00000-00" not in picked  # the SILENCE turn is skipped
    assert report.pick_cases(gens, 3, ["test-00000-00"]) == ["test-00000-00"]
    with pytest.raises(InputError, match="case_ids"):
        report.pick_cases(gens, 3, ["test-99999-00"])
    assert report.pick_cases({"seq2seq": None}, 3) == []


def test_case_study_uses_the_first_seed_present(project):
    from stages import report as stage

    (project / "reports/generations/seq2seq/seed1.parquet").unlink()
    stage.main()
    text = (project / "reports/results.md").read_text()
    assert "Responses from: Seq2Seq seed2, GPMN seed1, PEDNet seed1, PEDNet + GCL seed1." in text
    assert "| Seq2Seq | seq2seq s2 says" in text and "| PEDNet | pednet s1 says" in text
    for model in ("gpmn", "pednet", "pednet_gcl"):
        (project / f"reports/generations/{model}/seed1.parquet").unlink()
    stage.main()
    text = (project / "reports/results.md").read_text()
    assert (
        "Every model's responses are from its seed2 generations" in text and "| GPMN | not run |  |" in text
    )


def test_nothing_run_yet_renders(tmp_path, monkeypatch):
    from stages import report as stage

    write_report_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    stage.main()
    text = Path("reports/results.md").read_text()
    assert "Evaluated: none yet." in text and "No generations yet." in text
    assert "| PEDNet | *paper* | 0.031 | 0.173 | 0.143 | 0.088 | 0.109 | 0.045 |" in text
    assert "Not run yet: Gold (reference), Constant reply." in text
    assert json.loads(Path("reports/summary.json").read_text()) == {}
    claims = json.loads(Path("reports/claims.json").read_text())
    assert len(claims) == len(stats.CLAIMS) and {c["holds"] for c in claims} == {stats.NOT_RUN}


def test_bad_inputs(project):
    from stages import report as stage

    bad = project / "reports/metrics/postks/seed2.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="postks/seed2.json:1: not JSON"):
        stage.main()
    bad.write_text(json.dumps({"bleu_1": 0.1}))
    with pytest.raises(InputError, match="missing metric"):
        stage.main()
    bad.unlink()
    write_report_params(project, report={"models": ["pednet", "pednet"]})
    with pytest.raises(InputError, match="report.models: expected a non-empty list of distinct items"):
        stage.main()
    write_report_params(project, report={"models": ["pednet"], "controls": ["pednet"]})
    with pytest.raises(InputError, match="report.controls: shares"):
        stage.main()
    write_report_params(project, report={"models": ["pednet"], "bootstrap": 0})
    with pytest.raises(InputError, match="report.bootstrap: expected an integer >= 1, got 0"):
        stage.main()
    write_report_params(project, seeds=[], report={"models": ["pednet"]})
    with pytest.raises(InputError, match="seeds: expected a non-empty list"):
        stage.main()


def test_training_records_are_collected(project):
    from stages import report as stage

    def record(epochs: int, stopped: str) -> dict:
        return {"epochs": epochs, "steps": epochs * 10, "best_val_ppl": 50.0 + epochs, "lr_decays": 1,
                "stopped": stopped, "seed": 1, "best_step": epochs * 10 - 20}

    write_json(record(8, "early_stopping"), project / "reports/training/seq2seq/seed1.json")
    write_json(record(10, "early_stopping"), project / "reports/training/seq2seq/seed2.json")
    write_json(record(40, "max_epochs"), project / "reports/training/seq2seq/seed3.json")
    write_json(record(99, "max_epochs"), project / "reports/training/seq2seq/seed4.json")  # not in `seeds`
    stage.main()
    training = json.loads((project / "reports/training.json").read_text())
    assert list(training) == ["seq2seq"] and sorted(training["seq2seq"]["seeds"]) == ["seed1", "seed2", "seed3"]
    summary = training["seq2seq"]["summary"]
    assert summary["epochs"]["mean"] == pytest.approx(58 / 3) and summary["epochs"]["n_seeds"] == 3
    assert summary["stopped"] == {"early_stopping": 2, "max_epochs": 1}
    text = (project / "reports/results.md").read_text()
    assert "## Training: to convergence" in text and "early_stopping × 2, max_epochs × 1" in text
    assert "| 60, 80, 380 |" in text  # the kept (best) step of each seed

    (project / "reports/training/seq2seq/seed2.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="seed2.json: not JSON"):
        stage.main()


def test_portable_rounds_away_the_last_bits_of_cpu_dependent_sums():
    from stages.report import portable

    a = {"ci95": [0.030505897918311195, -1.5e-07], "n": 3, "holds": True, "id": "x"}
    b = {"ci95": [0.03050589791831118, -1.5000000000000002e-07], "n": 3, "holds": True, "id": "x"}
    assert portable(a) == portable(b) == {"ci95": [0.0305058979183, -1.5e-07], "n": 3, "holds": True, "id": "x"}


def test_collapsed_runs_are_shown_and_their_claims_flagged(project):
    from stages import report as stage

    # GPMN seed 1 answers 4 of 5 turns with one sentence; Seq2Seq seed 2's metrics file has the keys
    table = fake_generations("gpmn", [None] * 5)
    hyps = ["i am a nurse ."] * 4 + ["hi"]
    write_parquet(table.set_column(table.schema.get_field_index("hypothesis"), "hypothesis", pa.array(hyps)),
                  project / "reports/generations/gpmn/seed1.parquet")
    write_json({**fake_metrics(1.1), "distinct_replies": 5, "top_reply_share": 0.2},
               project / "reports/metrics/seq2seq/seed2.json")
    stage.main()
    text = (project / "reports/results.md").read_text()
    lines = text.splitlines()
    assert "| Run | Distinct replies per seed | Top reply share per seed | Collapsed |" in lines
    assert "| GPMN | 2 | **0.80** | **yes** |" in lines  # computed from the generations (older metrics file)
    assert "| Seq2Seq | 5 / 5 / 5 | 0.20 / 0.20 / 0.20 | no |" in lines
    claims = {c["id"]: c for c in json.loads((project / "reports/claims.json").read_text())}
    assert claims["pednet_table2:persona_f1:seq2seq<gpmn"]["collapsed"] == ["gpmn seed1"]
    assert claims["pednet_table2:persona_coverage:seq2seq<gpmn"]["collapsed"] == ["gpmn seed1"]
    assert claims["pednet_table2:persona_f1:gpmn<postks"]["collapsed"] == ["gpmn seed1"]  # not run: all seeds
    assert all(not c["collapsed"] for i, c in claims.items() if "gpmn" not in (c["lower"], c["higher"]))
    flagged = [line for line in lines if line.startswith("| Seq2Seq < GPMN on P-F1 (PEDNet Table 2) |")]
    assert "⚠ collapsed: GPMN seed 1" in flagged[0]
    summary = json.loads((project / "reports/summary.json").read_text())
    assert summary["gpmn"]["top_reply_share"]["mean"] == 0.8


def test_learner_deviations_name_each_non_paper_learner_setting_and_nothing_else():
    from pipeline.evaluation.report import learner_deviations

    paper = {"deeprl": {"coherence_forward": 1.0}, "mmi": {"nbest": "beam", "n_best": 50}}
    assert learner_deviations(paper) == []
    ours = learner_deviations({"deeprl": {"coherence_forward": 0.0}, "mmi": {"nbest": "sample", "n_best": 50}})
    assert len(ours) == 2
    assert "`deeprl.coherence_forward`" in ours[0] and "by 0 " in ours[0]
    assert "50 samples" in ours[1] and "`mmi.nbest: sample`" in ours[1]
