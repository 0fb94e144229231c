"""The scale benchmark (benchmarks/scale.py) through every stage up to reference_scores, the
two MLE epochs and the decoding, on a tiny generated corpus at x1 and x2 (x2 on the sampled
pools), with tiny models and 2 / 3 optimizer steps; and its markdown."""

from __future__ import annotations

import pytest

from benchmarks import scale
from benchmarks.__main__ import record_scale, render
from tests.corpus import write_corpus
from tests.dvc_project import TINY_PARAMS
from tests.test_full_dag import TINY_DAG

KNOBS = {"steps": (2, 3), "full_up_to": 1, "sample_rows": 3, "decode_rows": 5}
TINY = {**TINY_PARAMS, **{k: TINY_DAG[k] for k in ("model", "train", "pednet", "msn", "seq2seq_history", "generate",
                                                   "matcher")}}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scale_measures_every_stage_at_both_factors(tmp_path):
    raw = write_corpus(tmp_path / "corpus", sizes=(24, 8, 8), seed=0)
    factors = [1, 2]
    results = {"scale": scale.bench_scale(raw, factors, tmp_path / "work", overrides=TINY, **KNOBS),
               "machine": "test", "details": {}}
    assert list(results["scale"]) == list(scale.STAGES)
    for stage, runs in results["scale"].items():
        for f in ("x1", "x2"):
            e = runs[f]
            assert e["seconds"] > 0 and e["peak_rss_bytes"] > 10 * 2**20, (stage, f)
            assert e["cost_seconds"] > 0, (stage, f)
    for stage in ("msn", "matcher", "train@seq2seq_history", "train@pednet"):
        for f in ("x1", "x2"):
            e = results["scale"][stage][f]
            assert e["how"] == "max_steps" and e["steps_measured"] == [2, 3]
            assert e["seconds_per_step"] > 0 and e["projected_epoch_seconds"] > 0 and e["steps_per_epoch"] > 0
            assert e.get("projected_configured_epochs_seconds", e.get("projected_stage_seconds")) > 0
    for stage in ("score_groups", "select_groups", "reference_scores"):
        x1, x2 = results["scale"][stage]["x1"], results["scale"][stage]["x2"]
        assert x1["how"] == "full" and x1["seconds_per_unit"] >= 0
        assert 0 < x1["sampled_run"]["units"] <= x1["units_whole"]
        # x2 on sampled pools, projected with x1's seconds per unit
        assert x2["how"] == "subset" and x2["projected_from"] == "x1 seconds per unit"
        assert x2["units_measured"] <= x2["units_whole"] and x2["projected_full_seconds"] >= x2["seconds"]
    assert scale.scoring_rates(results["scale"]) == {s: results["scale"][s]["x1"]["seconds_per_unit"]
                                                     for s in ("score_groups", "select_groups", "reference_scores")}
    decode = results["scale"]["decode@seq2seq_history"]["x2"]
    assert decode["rows_decoded"] == 5 and decode["test_rows"] > 5 and decode["projected_full_seconds"] > 0

    record_scale(results, factors, KNOBS, {})
    assert set(results["scale_growth_exponent"]) == set(scale.STAGES)
    assert set(results["scale_totals"]) == {"x1", "x2"}
    assert results["scale_totals"]["x2"]["projected_repro"]["total_minutes"] >= 0
    table = render(results)
    assert "## Scale: every stage up to reference_scores" in table
    for stage in scale.STAGES:
        assert f"| {stage} | " in table
    assert "projected 3-seed make repro" in table


def test_growth_exponent_and_render_of_old_results():
    """A quadratic stage shows ~2, a linear one ~1; entries of the old benchmark (no `how`,
    no meta) still render."""
    runs = {"groups": {f"x{f}": {"seconds": 2.0 * f * f, "peak_rss_bytes": 2**20} for f in (1, 3, 9)},
            "prepare": {f"x{f}": {"seconds": 1.5 * f, "peak_rss_bytes": 2**20} for f in (1, 3, 9)}}
    g = scale.growth_exponent(runs)
    assert g == {"groups": 2.0, "prepare": 1.0}
    lines = scale.render({"scale": runs, "scale_growth": scale.growth(runs, [1, 3, 9])})
    assert any(line.startswith("| groups | 2.0 / 1 | 18.0 / 1 | 162.0 / 1 | 2.0 |") for line in lines)


def test_training_stages_cost_their_steps_at_the_pooled_seconds_per_step():
    """msn: fixed cost + configured steps x the pooled s/step; an MLE run: one epoch at it.
    The x9 goal names both totals and, when missed, the largest stages."""
    def ranker(f, per_step):  # 100 s in all for 35 steps -> fixed 100 - 35 x per_step
        return {"seconds": 100.0, "peak_rss_bytes": 2**30, "how": "max_steps", "steps_measured": [5, 35],
                "seconds_per_step": per_step, "seconds_per_step_from": "difference", "steps_per_epoch": 10 * f,
                "configured_steps": 20 * f, "epochs_configured": 2}
    runs = {"fetch": {f"x{f}": {"seconds": 60.0 * f, "peak_rss_bytes": 2**30} for f in (1, 9)},
            "msn": {"x1": ranker(1, 0.1), "x9": ranker(9, 0.3)},
            "train@seq2seq_history": {}}
    for f, per_step in ((1, 0.1), (9, 0.3)):  # an MLE run has no configured_steps
        runs["train@seq2seq_history"][f"x{f}"] = {k: v for k, v in ranker(f, per_step).items() if k != "configured_steps"}
    assert scale.pooled_step(runs, "msn") == pytest.approx(0.2)
    assert scale.stage_cost(runs, "msn", "x9") == pytest.approx(100 - 35 * 0.3 + 180 * 0.2)
    assert scale.stage_cost(runs, "train@seq2seq_history", "x9") == pytest.approx(90 * 0.2)
    assert scale.stage_cost(runs, "fetch", "x9") == 540.0
    goal = scale.totals(runs)["x9"]["goal"]
    assert goal.startswith("fetch -> groups <= 15 min and <= 8 GB: met; everything before MLE training")
    assert "NOT met" not in goal
    runs["fetch"]["x9"]["seconds"] = 1000.0
    goal = scale.totals(runs)["x9"]["goal"]
    assert goal.count("NOT met") == 2 and "largest: fetch 16.7 min, msn 2.1 min" in goal


def test_replicated_copies_are_distinct_text_with_the_same_structure(tmp_path):
    from benchmarks.scale import replicate_corpus
    from pipeline.preprocessing import parlai

    src = tmp_path / "src"
    src.mkdir()
    text = ("1 your persona: i like dogs.\n2 your persona: i run.\n3 __SILENCE__\thi there\n"
            "4 how are you ?\tfine , thanks\n1 your persona: i am a nurse.\n2 hello\thi\n")
    (src / "train_self_original_no_cands.txt").write_text(text)
    out = replicate_corpus(src, tmp_path / "x3", 3) / "train_self_original_no_cands.txt"
    dialogues = parlai.read_dialogues(out)
    assert len(dialogues) == 6 and out.read_text().startswith(text)  # copy 0 is the file itself
    assert dialogues[2].persona == ["copy1 i like dogs.", "copy1 i run."] and dialogues[4].turns[0].query == "__SILENCE__"
    assert dialogues[4].turns[0].response == "copy2 hi there"
    # every sentence distinct across copies: the deduplicating stages see 3x the texts
    sentences = [t.response for d in dialogues for t in d.turns] + [p for d in dialogues for p in d.persona]
    assert len(set(sentences)) == len(sentences)
