"""Seed summaries and the paired bootstrap of pipeline/evaluation/stats.py on small constructed cases."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from pipeline.evaluation import metrics, paper_results, stats
from pipeline.io import InputError

# ---------------------------------------------------------------- summarize


def test_summarize_known_numbers():
    s = stats.summarize([1, 2, 3])
    # mean 2; sd sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1; t_{0.975, 2} = 4.302653
    half = 4.302652729929 / math.sqrt(3)
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0) and s["n_seeds"] == 3
    assert s["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-9)
    # two seeds: t_{0.975, 1} = 12.706205
    two = stats.summarize([0.5, 0.7])
    assert two["sd"] == pytest.approx(math.sqrt(0.02))
    assert two["ci95"][1] - two["mean"] == pytest.approx(12.706204736 * math.sqrt(0.02) / math.sqrt(2))


def test_summarize_one_seed_is_json_safe():
    assert stats.summarize([0.25]) == {"mean": 0.25, "sd": None, "ci95": [0.25, 0.25], "n_seeds": 1}
    assert stats.summarize([4, 4, 4])["ci95"] == [4.0, 4.0]  # no spread: a point, not NaN
    with pytest.raises(ValueError, match="no values"):
        stats.summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.summarize([1.0, float("nan")])


def test_summarize_seeds_takes_the_numbers_every_seed_has():
    out = stats.summarize_seeds([
        {"bleu_1": 0.1, "n_examples": 10, "flag": True, "note": "x", "extra": 1.0},
        {"bleu_1": 0.3, "n_examples": 10, "flag": False, "note": "y"},
    ])  # fmt: skip
    assert sorted(out) == ["bleu_1", "n_examples"]
    assert out["bleu_1"]["mean"] == pytest.approx(0.2) and out["n_examples"]["sd"] == 0.0


# ---------------------------------------------------------------- per-example statistics


def test_fast_bleu_is_nltks_bit_for_bit():
    r = random.Random(3)
    words = "i love my dog the a cat pizza , . ! runs fast and slow".split()
    pairs = [(" ".join(r.choices(words, k=r.randint(0, 9))), " ".join(r.choices(words, k=r.randint(0, 9))))
             for _ in range(400)]  # fmt: skip
    pairs += [("i love my dog", "i love my dog"), ("dog", "the ."), ("a b c d e", "a b")]
    for ref, hyp in pairs:
        assert metrics.sentence_bleu_1_4(ref, hyp) == metrics.nltk_sentence_bleu_1_4(ref, hyp), (ref, hyp)


def _generations(hypotheses, references=None, persona=("i have a big dog", "i love pizza")):
    n = len(hypotheses)
    return {
        "example_id": [f"test-{i // 4:05d}-{i % 4:02d}" for i in range(n)],
        "persona": [list(persona)] * n,
        "reference": references if references is not None else ["my dog is big"] * n,
        "hypothesis": list(hypotheses),
        # per-token log-probs of the reference given its own / a shuffled context (query_gain)
        "log_p_own": [-1.0 - 0.1 * len(h.split()) for h in hypotheses],
        "log_p_shuffled": [-1.5 - 0.05 * (i % 7) for i in range(n)],
    }


def test_resampled_metrics_equal_the_metric_on_the_resampled_text():
    r = random.Random(5)
    vocab = "dog pizza big i love my the run , .".split()
    hyps = [" ".join(r.choices(vocab, k=r.randint(0, 7))) for _ in range(30)]
    refs = [" ".join(r.choices(vocab, k=r.randint(1, 7))) for _ in range(30)]
    gen = _generations(hyps, refs)
    gen["example_id"] = list(reversed(gen["example_id"]))  # rows are reordered by example_id
    idf = {"dog": 0.2, "pizza": 0.5}
    ex = stats.example_stats(gen, stats.SUPPORTED_METRICS, idf, source="x")
    order = sorted(range(30), key=gen["example_id"].__getitem__)
    draw = [order[i] for i in np.random.default_rng(0).integers(0, 30, size=30)]  # with repeats
    counts = np.zeros((1, 30))
    for i in draw:
        counts[0, order.index(i)] += 1
    text = [hyps[i] for i in draw]
    expected = {f"distinct_{n}": metrics.distinct([t.split() for t in text], n) for n in (1, 2, 3)}
    expected.update(metrics.bleu_metrics([refs[i] for i in draw], text))
    expected.update(metrics.persona_metrics(text, [gen["persona"][i] for i in draw], idf))
    expected.update(metrics.query_metrics([gen["log_p_own"][i] for i in draw],
                                          [gen["log_p_shuffled"][i] for i in draw]))
    for metric in stats.SUPPORTED_METRICS:
        got = stats.metric_on_resamples(ex, metric, counts)
        assert got[0] == pytest.approx(expected[metric], abs=1e-12), metric
    # a row of ones is the test set itself
    assert stats.metric_on_resamples(ex, "distinct_2", np.ones((1, 30)))[0] == pytest.approx(
        metrics.distinct([h.split() for h in hyps], 2)
    )


def test_resample_counts_are_reproducible_draws_of_n():
    a = stats.resample_counts(50, 20, seed=7)
    assert a.shape == (20, 50) and (a.sum(axis=1) == 50).all()
    assert np.array_equal(a, stats.resample_counts(50, 20, seed=7))
    assert not np.array_equal(a, stats.resample_counts(50, 20, seed=8))


# ---------------------------------------------------------------- claims


def _seeds(run: str, hypothesis_lists, references=None) -> list[stats.ExampleStats]:
    return [
        stats.example_stats(_generations(h, references), stats.SUPPORTED_METRICS, {}, source=f"{run}/seed{k}", seed=k)
        for k, h in enumerate(hypothesis_lists, start=1)
    ]


N = 40
REFS = [f"reference number {i} about my dog" for i in range(N)]


def test_an_ordering_that_clearly_holds_and_one_that_clearly_does_not():
    # "same": one reply for every turn; "varied": a different reply per turn and seed
    same = _seeds("same", [["i like it ."] * N] * 3)
    varied = _seeds("varied", [[f"reply s{k} {i} words here" for i in range(N)] for k in range(3)])
    claims = [
        stats.Claim("p", "distinct_1", "same", "varied"),
        stats.Claim("p", "distinct_1", "varied", "same"),
    ]
    up, down = stats.evaluate_claims(claims, {"same": same, "varied": varied}, replicates=200, seed=1)
    # same: 4 unique of 4N unigrams; varied: "reply", "s<k>", 40 numbers, "words", "here" of 5N
    d = (4 + N) / (5 * N) - 4 / (4 * N)
    assert up["difference"] == pytest.approx(d)
    assert up["holds"] is True and 0 < up["ci95"][0] <= d <= up["ci95"][1]
    assert down["holds"] is False and down["ci95"][1] < 0 and down["difference"] == pytest.approx(-d)
    assert up["id"] == "p:distinct_1:same<varied"
    assert up["n_seeds"] == {"lower": 3, "higher": 3} and up["n_examples"] == N and up["bootstrap"] == 200
    assert 0 < up["p_value"] <= 2 / 201 + 1e-12  # no replicate on the wrong side
    assert up["means"]["higher"] - up["means"]["lower"] == pytest.approx(d)


def test_bleu_claim_and_a_difference_inside_noise():
    gold = _seeds("gold", [REFS], REFS)
    unrelated = _seeds("unrelated", [["pizza is great"] * N], REFS)
    # half right, half wrong, the halves swapped: equal means, every paired difference ±1
    first = _seeds("first", [[r if i < N // 2 else "pizza" for i, r in enumerate(REFS)]], REFS)
    second = _seeds("second", [[r if i >= N // 2 else "pizza" for i, r in enumerate(REFS)]], REFS)
    runs = {"gold": gold, "unrelated": unrelated, "first": first, "second": second}
    claims = [stats.Claim("p", "bleu_1", "unrelated", "gold"), stats.Claim("p", "bleu_1", "first", "second")]
    clear, noise = stats.evaluate_claims(claims, runs, replicates=300, seed=2)
    assert clear["holds"] is True and clear["difference"] == pytest.approx(1.0)
    assert noise["difference"] == 0.0 and noise["holds"] == stats.NOT_SIGNIFICANT
    assert noise["ci95"][0] < -0.1 and noise["ci95"][1] > 0.1 and noise["p_value"] > 0.5


def test_seed_noise_widens_the_interval():
    # base: one fixed reply (a control, no seed), so each run's three seeds all count
    base = [dataclasses.replace(s, seed=None) for s in _seeds("base", [["pizza"] * N], REFS)]

    def run(hits: list[int]) -> list[stats.ExampleStats]:  # seed k answers its first hits[k] turns right
        return _seeds("x", [[r if i < h else "pizza" for i, r in enumerate(REFS)] for h in hits], REFS)

    steady, shaky = run([20, 20, 20]), run([8, 20, 32])  # the same mean over seeds
    claims = [stats.Claim("p", "bleu_1", "base", "steady"), stats.Claim("p", "bleu_1", "base", "shaky")]
    a, b = stats.evaluate_claims(claims, {"base": base, "steady": steady, "shaky": shaky}, 400, 3)
    assert a["difference"] == pytest.approx(b["difference"])
    assert b["ci95"][1] - b["ci95"][0] > 1.5 * (a["ci95"][1] - a["ci95"][0])


def test_persona_f1_claim():
    persona = ("i have a big dog", "i love pizza")
    copy = [stats.example_stats(_generations(["i have a big dog"] * N, persona=persona), ["persona_f1"], {})]
    other = [
        stats.example_stats(_generations(["hello there friend"] * N, persona=persona), ["persona_f1"], {})
    ]
    (c,) = stats.evaluate_claims(
        [stats.Claim("p", "persona_f1", "other", "copy")], {"copy": copy, "other": other}, 50
    )
    # copy: R = 1 (big, dog of {big, dog}), P = 1 -> F1 1; other: 0
    assert c["difference"] == pytest.approx(1.0) and c["holds"] is True


def test_missing_runs_are_not_run_and_mismatched_examples_are_an_error():
    one = _seeds("one", [["a b c"] * N])
    out = stats.evaluate_claims([stats.Claim("p", "distinct_1", "one", "absent")], {"one": one}, 10)
    assert out[0]["holds"] == stats.NOT_RUN and out[0]["difference"] is None and out[0]["ci95"] is None
    assert out[0]["n_seeds"] == {"lower": 1, "higher": 0}
    short = [stats.example_stats(_generations(["a b"] * (N - 1)), ["distinct_1"], source="short/seed1")]
    with pytest.raises(InputError, match="short/seed1: its test examples differ"):
        stats.evaluate_claims(
            [stats.Claim("p", "distinct_1", "one", "short")], {"one": one, "short": short}, 10
        )
    with pytest.raises(ValueError, match="not supported"):
        stats.metrics_by_run([stats.Claim("p", "emb_greedy", "one", "short")])


def test_claims_are_reproducible_and_independent_of_each_other():
    runs = {
        "a": _seeds("a", [[f"x {i % 7}" for i in range(N)], [f"x {i % 9}" for i in range(N)]], REFS),
        "b": _seeds("b", [[f"y {i % 8} {i % 3}" for i in range(N)]] * 2, REFS),
    }
    claims = [stats.Claim("p", m, "a", "b") for m in ("distinct_2", "bleu_1", "distinct_1")]
    all_three = stats.evaluate_claims(claims, runs, 100, seed=4)
    assert all_three == stats.evaluate_claims(claims, runs, 100, seed=4)
    assert stats.evaluate_claims(claims[2:], runs, 100, seed=4) == all_three[2:]
    assert stats.evaluate_claims(claims[2:], runs, 100, seed=5)[0]["ci95"] != all_three[2]["ci95"]


def test_the_papers_claims():
    ids = [c.id for c in stats.CLAIMS]
    assert len(ids) == len(set(ids)) == 6 + 14 + 5 * 7 + 3 * 7 + 6 * 2  # the last steps: Seq2Seq, HRED, Transformer, HRAN, PEDNet
    assert ids[:3] == [
        "pednet_table2:persona_f1:seq2seq<gpmn",
        "pednet_table2:persona_f1:gpmn<postks",
        "pednet_table2:persona_f1:postks<pednet",
    ]
    assert "pednet_table2:persona_coverage:postks<pednet" in ids
    # GCL Table 2(a): every generator (all read the multi-turn history) + GCL above it by MLE
    for base in ("seq2seq_history", "pednet", "hred_history", "transformer_history", "hran_history"):
        for m in ("distinct_1", "distinct_2", "distinct_3", "bleu_1", "bleu_2", "bleu_3", "bleu_4"):
            assert f"gcl_table2a:{m}:{base}<{base}_gcl" in ids
    for base in ("seq2seq_history", "transformer_history", "hran_history", "pednet"):
        assert f"gcl_table2a:distinct_2:{base}<{base}_gcl_last" in ids
    # GCL Table 3: GCL above each learner on Dist-2 and BLEU-1, but MMI above GCL on BLEU-1 (as printed)
    gcl = "seq2seq_history_gcl"
    for learner in ("adversarial_last", "mmi", "mmi_antilm", "deeprl", "cvae", "dialogwae"):
        assert f"gcl_table3:distinct_2:seq2seq_history_{learner}<{gcl}" in ids
        bleu = f"gcl_table3:bleu_1:{gcl}<seq2seq_history_mmi" if learner == "mmi" else \
            f"gcl_table3:bleu_1:seq2seq_history_{learner}<{gcl}"
        assert bleu in ids
    assert sum(c.paper == "gcl_table3" for c in stats.CLAIMS) == 12
    table3 = {f"seq2seq_history_{x}" for x in ("adversarial_last", "mmi", "mmi_antilm", "deeprl", "cvae", "dialogwae")}
    assert set(stats.metrics_by_run(stats.CLAIMS)) == {"seq2seq", "gpmn", "postks", "pednet", "seq2seq_history",
                                                       "seq2seq_history_gcl", "seq2seq_history_gcl_last",
                                                       "pednet_gcl", "pednet_gcl_last", "hred_history", "hred_history_gcl",
                                                       "transformer_history", "transformer_history_gcl",
                                                       "transformer_history_gcl_last", "hran_history",
                                                       "hran_history_gcl", "hran_history_gcl_last",
                                                       "hred_history_gcl_last"} | table3  # fmt: skip


def test_claims_agree_with_the_papers_printed_numbers():
    """Every claim whose two runs both have a row in its paper's table says what that table prints."""
    tables = {"pednet_table2": paper_results.PEDNET_TABLE2, "gcl_table2a": paper_results.GCL_TABLE2A,
              "gcl_table3": paper_results.GCL_TABLE3}  # fmt: skip
    checked = 0
    for c in stats.CLAIMS:
        table = tables[c.paper]
        if c.lower in table and c.higher in table:
            lower, higher = (paper_results.paper_fraction(table, run, c.metric) for run in (c.lower, c.higher))
            assert lower < higher, c.id
            checked += 1
    # all but pednet<pednet_gcl and the _last run in 2(a), and MMI-antiLM (no paper row) in Table 3
    assert checked == 6 + 4 * 7 + 5 * 2


def test_a_claim_on_a_run_not_run_yet():
    """A new run without generations (absent from ``runs``): its claims are "not run", the rest computed."""
    gcl = _seeds("seq2seq_history_gcl", [[f"reply {i}" for i in range(N)]] * 2, REFS)
    cvae = _seeds("seq2seq_history_cvae", [["i like it ."] * N], REFS)
    claims = [c for c in stats.CLAIMS if c.paper == "gcl_table3"]
    out = {c["id"]: c for c in stats.evaluate_claims(claims, {"seq2seq_history_gcl": gcl,
                                                               "seq2seq_history_cvae": cvae}, 50)}  # fmt: skip
    done = out["gcl_table3:distinct_2:seq2seq_history_cvae<seq2seq_history_gcl"]
    assert done["holds"] is True and done["n_seeds"] == {"lower": 1, "higher": 1}  # the seed both have
    for learner in ("adversarial_last", "mmi", "mmi_antilm", "deeprl", "dialogwae"):
        for c in out.values():
            if f"seq2seq_history_{learner}" in (c["lower"], c["higher"]):
                assert c["holds"] == stats.NOT_RUN and c["difference"] is None, c["id"]
    mmi = out["gcl_table3:bleu_1:seq2seq_history_gcl<seq2seq_history_mmi"]
    assert mmi["n_seeds"] == {"lower": 2, "higher": 0}


def test_claims_compare_the_seeds_both_runs_have():
    # base seeds 1-3 differ; "tuned" has only seed 1, a copy of base's seed 1 (a fine-tune
    # that kept its step 0): unpaired, 1 seed against the mean of 3 would "hold"
    hyps = [[f"w{i % m}" for i in range(N)] for m in (30, 5, 3)]
    base = _seeds("base", hyps, REFS)
    tuned = _seeds("tuned", hyps[:1], REFS)
    (c,) = stats.evaluate_claims([stats.Claim("p", "distinct_1", "base", "tuned")], {"base": base, "tuned": tuned}, 200)
    assert c["difference"] == 0.0 and c["holds"] == stats.NOT_SIGNIFICANT
    assert c["n_seeds"] == {"lower": 1, "higher": 1} and c["paired_seeds"] == [1]
    # without seed numbers (a control) the runs are compared as they are
    unnumbered = [dataclasses.replace(s, seed=None) for s in tuned]
    (u,) = stats.evaluate_claims([stats.Claim("p", "distinct_1", "base", "x")], {"base": base, "x": unnumbered}, 200)
    assert u["paired_seeds"] is None and u["n_seeds"] == {"lower": 3, "higher": 1} and u["difference"] > 0
