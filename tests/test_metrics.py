"""Every metric of methods §4 against small cases computed by hand (arithmetic in comments)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.evaluation import metrics
from pipeline.io import InputError, read_parquet, write_parquet
from pipeline.preprocessing.embeddings import to_table
from pipeline.preprocessing.vocab import load_vocab
from pipeline.schema import GENERATIONS, GENERATIONS_LEGACY
from tests.prepared import write_params, write_prepared

SHARED_IDF = Path(__file__).resolve().parents[2] / "shared/data/persona_idf/convai2_vocab_idf.tsv"


# ---------------------------------------------------------------- Distinct


def test_distinct_counts_corpus_level_and_ignores_empty_responses():
    hyps = [["a", "b", "a"], ["a", "b"], []]
    # unigrams a b a a b: 5 in all, 2 unique -> 2/5
    assert metrics.distinct(hyps, 1) == pytest.approx(2 / 5)
    # bigrams (a b) (b a) (a b): 3 in all, 2 unique -> 2/3
    assert metrics.distinct(hyps, 2) == pytest.approx(2 / 3)
    # trigrams: only (a b a) -> 1/1
    assert metrics.distinct(hyps, 3) == 1.0
    assert metrics.distinct([[], []], 1) == 0.0  # nothing generated: 0, not a division error


# ---------------------------------------------------------------- persona metrics


def test_degeneracy_on_constructed_generations():
    assert metrics.degeneracy(["a b", "c", "a  b ", "d", "a b", "e", "f", "g"]) == {
        "distinct_replies": 6, "top_reply_share": 3 / 8}  # "a b" x3, whitespace-normalised
    assert metrics.degeneracy(["i am a nurse ."] * 9 + ["hi"]) == {"distinct_replies": 2, "top_reply_share": 0.9}
    gold = [f"reply {i}" for i in range(50)]
    assert metrics.degeneracy(gold) == {"distinct_replies": 50, "top_reply_share": 0.02}
    assert metrics.degeneracy([]) == {"distinct_replies": 0, "top_reply_share": 0.0}


def test_persona_scores_by_hand():
    persona = ["i have a big dog", "i love pizza and pasta"]
    idf = {"big": 0.2, "dog": 0.16, "pizza": 0.3}
    s = metrics.persona_scores("my dog loves pizza and big parks", persona, idf)
    # W_Y = {dog, loves, pizza, big, parks} (my, and: stop words), |W_Y| = 5
    # p1: W = {big, dog}, overlap {big, dog}: R = 2/2, P = 2/5, coverage (0.2 + 0.16)/2 = 0.18
    # p2: W = {love, pizza, pasta}, overlap {pizza}: R = 1/3, P = 1/5, coverage 0.3/1 = 0.3
    # each maximum on its own: R = 1, P = 0.4, coverage = 0.3 (from p2)
    assert (s.recall, s.precision, s.coverage) == pytest.approx((1.0, 0.4, 0.3))


def test_persona_coverage_uses_the_readme_value_for_words_missing_from_the_table():
    s = metrics.persona_scores("dogs rule", ["i like dogs"], idf={})
    # overlap {dogs}, not in the table -> 0.58829 / 1
    assert s.coverage == pytest.approx(0.58829)
    assert metrics.IDF_MISSING == 0.58829


def test_persona_scores_zero_without_overlap_or_words():
    assert metrics.persona_scores("hello there", ["i have a dog"], {}) == metrics.PersonaScores(0, 0, 0)
    assert metrics.persona_scores("", ["i have a dog"], {}) == metrics.PersonaScores(0, 0, 0)
    assert metrics.persona_scores("i am a", ["i am"], {}) == metrics.PersonaScores(0, 0, 0)  # only stop words


def test_persona_metrics_average_and_f1_of_the_averages():
    persona = ["i have a big dog", "i love pizza and pasta"]
    idf = {"big": 0.2, "dog": 0.16, "pizza": 0.3}
    m = metrics.persona_metrics(["my dog loves pizza and big parks", ""], [persona, persona], idf)
    # example 1: R 1, P 0.4, C 0.3; example 2 (empty): 0, 0, 0
    # R = 0.5, P = 0.2, C = 0.15, F1 = 2 * 0.5 * 0.2 / 0.7 = 0.2857...
    assert m == pytest.approx(
        {"persona_recall": 0.5, "persona_precision": 0.2, "persona_f1": 0.2 / 0.7, "persona_coverage": 0.15}
    )


def test_load_idf(tmp_path):
    good = tmp_path / "idf.tsv"
    good.write_text("dog\t0.5\ngood day\t0.25\n\n", encoding="utf-8")
    assert metrics.load_idf(good) == {"dog": 0.5, "good day": 0.25}
    bad = tmp_path / "bad.tsv"
    bad.write_text("dog\t0.5\ncat 0.4\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.tsv:2: expected 'word<TAB>idf'"):
        metrics.load_idf(bad)
    with pytest.raises(InputError, match="cannot read idf table"):
        metrics.load_idf(tmp_path / "missing.tsv")


@pytest.mark.skipif(not SHARED_IDF.exists(), reason="shared idf table not present")
def test_the_shared_idf_table_loads():
    idf = metrics.load_idf(SHARED_IDF)
    assert len(idf) > 18000
    assert idf["dog"] == pytest.approx(0.159232)
    assert max(idf.values()) == pytest.approx(metrics.IDF_MISSING)  # the rarest words get the missing value


# ---------------------------------------------------------------- shuffled-persona control

A, B, C = ["i have a dog", "i like tea"], ["i play golf", "i am tall"], ["i love pizza", "i sing"]


def _by_dialogue(personas: list[list[str]], turns: int = 2) -> tuple[list[str], list[list[str]]]:
    ids = [f"test-{d:05d}-{t:02d}" for d in range(len(personas)) for t in range(turns)]
    return ids, [personas[d] for d in range(len(personas)) for _ in range(turns)]


def test_dialogue_of():
    assert metrics.dialogue_of("test-00428-05") == "test-00428"
    with pytest.raises(ValueError, match="not '<split>-<dialogue>-<turn>'"):
        metrics.dialogue_of("test00428")


def test_shuffle_skips_itself_and_identical_personas():
    # 6 dialogues, offset 6 // 2 = 3; dialogue 1 has A's sentences in another order (identical)
    personas = [A, A[::-1], B, A, C, B]
    ids, per_example = _by_dialogue(personas)
    partners = metrics.shuffled_partners(ids, per_example)
    # 0 -> 3 is A again, so 4; 1 -> 4; 2 -> 5 is B again, so 0; 3 -> 0, 1 are A, so 2; 4 -> 1; 5 -> 2 is B, so 3
    assert partners == {
        f"test-{a:05d}": f"test-{b:05d}" for a, b in [(0, 4), (1, 4), (2, 0), (3, 2), (4, 1), (5, 3)]
    }
    for d, other in partners.items():
        assert d != other and set(personas[int(d[-5:])]) != set(personas[int(other[-5:])])
    shuffled = metrics.shuffled_personas(ids, per_example)
    assert shuffled[0] == shuffled[1] == C and shuffled[4] == A
    # row order does not matter: the pairing is by sorted dialogue
    assert metrics.shuffled_partners(ids[::-1], per_example[::-1]) == partners
    # many dialogues sharing few personas (as Persona-Chat: ~8 dialogues a persona), in any sentence order
    r = random.Random(0)
    personas = [r.sample(r.choice([A, B, C]), 2) for _ in range(60)]
    ids, per_example = _by_dialogue(personas)
    for d, other in metrics.shuffled_partners(ids, per_example).items():
        assert d != other and set(personas[int(d[-5:])]) != set(personas[int(other[-5:])])


def test_shuffle_needs_two_personas_and_one_persona_per_dialogue():
    ids, per_example = _by_dialogue([A, A[::-1], A])
    with pytest.raises(ValueError, match="no dialogue has a persona other than test-00000's"):
        metrics.shuffled_partners(ids, per_example)
    ids, per_example = _by_dialogue([A, B])
    per_example[1] = C
    with pytest.raises(ValueError, match="test-00000 has different personas"):
        metrics.shuffled_partners(ids, per_example)


def test_persona_gain_copying_the_persona_against_a_constant_reply():
    personas = [A, B, C, ["i read books", "i love to travel"]]
    ids, per_example = _by_dialogue(personas, turns=3)
    shuffled = metrics.shuffled_personas(ids, per_example)
    copy = metrics.persona_control_metrics([p[0] for p in per_example], per_example, shuffled, {})
    # own persona: every content word of sentence 1 -> R = P = F1 = 1; the partner's shares none
    assert copy["persona_f1"] == pytest.approx(1.0) and copy["persona_f1_shuffled"] == 0.0
    assert copy["persona_f1_gain"] == pytest.approx(1.0)
    # "i love to read": {love, read} overlaps "i love pizza" (C) and "i love to travel" (D) alike
    # whichever persona it is scored against: the pairing is a permutation of 4 dialogues
    constant = metrics.persona_control_metrics(["i love to read ."] * len(ids), per_example, shuffled, {})
    assert constant["persona_f1"] > 0.1
    assert constant["persona_f1_gain"] == pytest.approx(0.0, abs=1e-12)
    assert constant["persona_coverage_shuffled"] == pytest.approx(constant["persona_coverage"])


# ---------------------------------------------------------------- BLEU


def test_bleu_normalisation_is_parlais():
    # lower-case; punctuation -> space ("isn't" -> "isn t"); articles a/an/the dropped
    assert metrics.bleu_tokens("The cat, isn't a dog!") == ["cat", "isn", "t", "dog"]
    assert metrics.bleu_tokens("an apple . the end") == ["apple", "end"]
    assert metrics.bleu_tokens(" . , ! ") == []


def test_sentence_bleu_by_hand():
    scores = metrics.sentence_bleu_1_4("i love my dog", "i love dogs")
    # c = 3, r = 4: BP = exp(1 - 4/3) = 0.716531
    # p1 = 2/3 (i, love), p2 = 1/2 (i love), p3 = 0/1 -> eps = 1e-12, p4 = 0/1 -> 1e-12 (method1)
    bp = math.exp(1 - 4 / 3)
    assert scores[0] == pytest.approx(bp * 2 / 3)  # 0.477688
    assert scores[1] == pytest.approx(bp * math.sqrt(2 / 3 * 1 / 2))  # 0.413690
    assert scores[2] == pytest.approx(bp * (2 / 3 * 1 / 2 * 1e-12) ** (1 / 3))  # 4.968e-05
    assert scores[3] == pytest.approx(bp * (2 / 3 * 1 / 2 * 1e-12 * 1e-12) ** (1 / 4))  # 5.444e-07


def test_bleu_matches_after_removing_articles_and_punctuation():
    # both become [dog, runs]: p1 = p2 = 1, BP = 1; p3: no trigram -> 1e-12, BLEU-3 = (1e-12)^(1/3)
    scores = metrics.sentence_bleu_1_4("the dog runs .", "a dog runs")
    assert scores[:2] == pytest.approx([1.0, 1.0])
    assert scores[2] == pytest.approx(1e-4)


def test_bleu_of_empty_hypothesis_is_zero_and_averages_over_sentences():
    assert metrics.sentence_bleu_1_4("i love my dog", "") == [0.0] * 4
    assert metrics.sentence_bleu_1_4("i love my dog", " . ") == [0.0] * 4
    m = metrics.bleu_metrics(["i love my dog", "i love my dog"], ["i love my dog", ""])
    # sentence 1 is a perfect match (1.0 at every order), sentence 2 scores 0 -> mean 0.5
    assert m == pytest.approx({"bleu_1": 0.5, "bleu_2": 0.5, "bleu_3": 0.5, "bleu_4": 0.5})


# ---------------------------------------------------------------- Entropy


def test_entropy_by_hand():
    stats = metrics.NgramStats.from_texts(["a b", "a c"])
    # unigrams a:2 b:1 c:1 (total 4); bigrams (a b):1 (a c):1 (total 2)
    # "a b z": unigrams -log2(2/4) = 1, -log2(1/4) = 2, z unseen -> 0: (1 + 2 + 0)/3 = 1
    assert metrics.sentence_entropy("a b z".split(), stats, 1) == pytest.approx(1.0)
    # bigrams (a b): -log2(1/2) = 1, (b z) unseen -> 0: (1 + 0)/2 = 0.5
    assert metrics.sentence_entropy("a b z".split(), stats, 2) == pytest.approx(0.5)
    assert metrics.sentence_entropy(["a"], stats, 2) == 0.0  # no bigram
    # the empty sentence counts as 0: entropy_1 = (1 + 0)/2, entropy_2 = (0.5 + 0)/2
    assert metrics.entropy_metrics([["a", "b", "z"], []], stats) == pytest.approx(
        {"entropy_1": 0.5, "entropy_2": 0.25}
    )


# ---------------------------------------------------------------- embedding metrics

TOKENS = ["<pad>", "<unk>", "__silence__", "x", "y", "z"]
VECTORS = np.array([[9, 9], [5, 5], [3, 3], [1, 0], [0, 1], [-2, 1]], dtype=np.float32)


@pytest.fixture
def wv():
    # training text "x x x y": p(x) = 3/4, p(y) = 1/4, p(z) = 0; with a = 1:
    # weight(x) = 1/(1 + 3/4) = 4/7, weight(y) = 1/(1 + 1/4) = 4/5, weight(z) = 1
    return metrics.WordVectors(TOKENS, VECTORS, metrics.NgramStats.from_texts(["x x x y"]), a=1.0)


def test_word_weights(wv):
    assert wv.weights[3:] == pytest.approx([4 / 7, 4 / 5, 1.0])
    assert "<unk>" not in wv.index and "__silence__" not in wv.index  # specials have no vector


def test_embedding_scores_by_hand(wv):
    avg, ext, greedy = metrics.embedding_scores(wv.ids(["x", "y"]), wv.ids(["x"]), wv)
    # Average: ref 4/7 (1,0) + 4/5 (0,1) = (4/7, 4/5); hyp 4/7 (1,0)
    #   cos = (4/7) / sqrt(16/49 + 16/25) = 5/sqrt(74) = 0.581238
    assert avg == pytest.approx(5 / math.sqrt(74))
    # Extrema: ref per dimension (1, 1), hyp (1, 0): cos = 1/sqrt(2)
    assert ext == pytest.approx(1 / math.sqrt(2))
    # Greedy: ref->hyp: x 1, y 0 -> 0.5; hyp->ref: x 1 -> 1; mean 0.75
    assert greedy == pytest.approx(0.75)


def test_extrema_keeps_the_value_of_largest_magnitude(wv):
    _, ext, _ = metrics.embedding_scores(wv.ids(["x", "z"]), wv.ids(["y"]), wv)
    # ref (1,0), (-2,1): dim 0 max 1, min -2 -> -2; dim 1 -> 1: (-2, 1); hyp (0, 1): cos = 1/sqrt(5)
    assert ext == pytest.approx(1 / math.sqrt(5))


def test_embedding_edge_cases(wv):
    assert metrics.embedding_scores(wv.ids(["x"]), wv.ids([]), wv) == (0.0, 0.0, 0.0)  # empty hypothesis
    assert metrics.embedding_scores(wv.ids(["x"]), wv.ids(["<unk>", "oov"]), wv) == (0.0, 0.0, 0.0)
    assert metrics.embedding_scores(wv.ids(["<unk>"]), wv.ids(["x"]), wv) is None  # reference without vector
    same = metrics.embedding_scores(wv.ids(["x", "z", "y"]), wv.ids(["y", "z", "x"]), wv)
    assert same == pytest.approx((1.0, 1.0, 1.0))


def test_embedding_metrics_and_coherence(wv):
    m = metrics.embedding_metrics(
        references=[["x", "y"], ["<unk>"], ["x", "z"]],
        hypotheses=[["x"], ["x"], []],
        queries=[["x", "y"], ["__silence__"], ["x"]],
        wv=wv,
    )
    # example 2: reference and query have no vector -> left out of both means
    # example 1: (5/sqrt(74), 1/sqrt(2), 0.75); example 3 (empty hypothesis): (0, 0, 0)
    # coherence: example 1 is Average(query "x y", "x") = 5/sqrt(74); example 3: 0
    assert m == pytest.approx(
        {
            "emb_average": 5 / math.sqrt(74) / 2,
            "emb_extrema": 1 / math.sqrt(2) / 2,
            "emb_greedy": 0.375,
            "coherence": 5 / math.sqrt(74) / 2,
            "n_emb_examples": 2,
            "n_coherence_examples": 2,
        }
    )


def test_coherence_is_the_weighted_average_against_the_query(wv):
    m = metrics.embedding_metrics([["x"]], [["x", "y"]], [["y"]], wv)
    # query 4/5 (0,1); hypothesis (4/7, 4/5): cos = (4/5) / sqrt(16/49 + 16/25) = 7/sqrt(74)
    assert m["coherence"] == pytest.approx(7 / math.sqrt(74))


# ---------------------------------------------------------------- everything together


def test_evaluate_returns_every_metric(wv):
    persona = [["i like x", "y is my job"]] * 2
    out = metrics.evaluate(
        hypotheses=["x y", ""],
        references=["x y", "z"],
        queries=["y", "x"],
        personas=persona,
        shuffled_personas=[["x is my job"], ["i like x"]],
        idf={},
        stats=metrics.NgramStats.from_texts(["x x x y"]),
        vectors=wv,
    )
    assert set(metrics.METRIC_KEYS) <= set(out)
    assert out["n_examples"] == 2 and out["n_empty_hypotheses"] == 1
    assert out["distinct_1"] == 1.0 and out["distinct_2"] == 1.0 and out["distinct_3"] == 0.0
    # example 1 recall: "i like x" -> {like, x} overlap {x}: 1/2; "y is my job" -> {y, job}: 1/2
    assert out["persona_recall"] == pytest.approx(0.25)
    # shuffled: "x y" against "x is my job" -> {x, job}, overlap {x}: R = P = 1/2, as against its own
    # persona, so the mean R, P, F1 are the same and the gain is 0
    assert out["persona_recall_shuffled"] == pytest.approx(0.25)
    assert out["persona_f1_shuffled"] == pytest.approx(out["persona_f1"]) and out["persona_f1"] > 0
    assert out["persona_f1_gain"] == pytest.approx(0.0)
    for key in metrics.METRIC_KEYS:
        if not key.startswith("entropy"):
            assert 0.0 <= out[key] <= 1.0 + 1e-12, key


# ---------------------------------------------------------------- the stage

GEN = "reports/generations/pednet/seed1.parquet"


def _generations_table(test: dict, hypotheses: list[str]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "example_id": test["example_id"],
            "persona": test["persona"],
            "context": test["query"],
            "reference": test["response"],
            "hypothesis": hypotheses,
            "selected_persona": [0] * len(hypotheses),
        },
        schema=GENERATIONS_LEGACY,  # as committed files written before log_p_own
    )


def _project(root: Path, hypotheses=None) -> Path:
    """data/prepared (tests/prepared.py), random vectors for its vocabulary, an idf table,
    params and seed 1's generations of `pednet` answering the test split."""
    if not (root / "data/prepared/test.parquet").exists():
        write_prepared(root)
    vocab = load_vocab(root / "data/prepared/vocab.parquet")
    rng = np.random.default_rng(0)
    write_parquet(to_table(vocab, rng.normal(size=(len(vocab), 8)).astype(np.float32)),
                  root / "data/embeddings/vectors.parquet")  # fmt: skip
    (root / "data/persona_idf").mkdir(parents=True)
    (root / "data/persona_idf/idf.tsv").write_text("dog\t0.16\nguitar\t0.17\n", encoding="utf-8")
    write_params(root, evaluate={})
    test = read_parquet(root / "data/prepared/test.parquet").to_pydict()
    if hypotheses is None:
        r = random.Random(1)
        hypotheses = [r.choice(test["response"]) for _ in test["response"]]
        hypotheses[0] = ""
    write_parquet(_generations_table(test, hypotheses), root / GEN)
    return root


def test_stage_writes_exactly_the_metric_keys_deterministically(tmp_path, monkeypatch):
    from stages import evaluate

    monkeypatch.chdir(_project(tmp_path))
    evaluate.main(["pednet", "--seed", "1"])
    out = tmp_path / "reports/metrics/pednet/seed1.json"
    first = out.read_bytes()
    values = json.loads(first)
    assert set(values) == set(metrics.METRIC_KEYS) | set(metrics.DEGENERACY_KEYS) | {"n_examples"}
    assert values["n_examples"] == len(read_parquet("data/prepared/test.parquet"))
    assert 0 < values["distinct_1"] < 1 and values["persona_recall"] > 0 and values["entropy_1"] > 0
    assert values["persona_f1_gain"] == pytest.approx(values["persona_f1"] - values["persona_f1_shuffled"])
    evaluate.main(["pednet", "--seed", "1"])
    assert out.read_bytes() == first


def test_stage_perfect_generations_score_one(tmp_path, monkeypatch):
    from stages import evaluate

    root = tmp_path
    write_prepared(root)
    refs = read_parquet(root / "data/prepared/test.parquet").column("response").to_pylist()
    monkeypatch.chdir(_project(root, hypotheses=refs))
    evaluate.main(["pednet", "--seed", "1"])
    values = json.loads(Path("reports/metrics/pednet/seed1.json").read_text())
    # hypothesis == reference: BLEU 1 wherever the normalised reference has >= 4 tokens
    long_enough = np.mean([len(metrics.bleu_tokens(r)) >= 4 for r in refs])
    assert values["bleu_1"] == pytest.approx(1.0)
    assert values["bleu_4"] >= long_enough - 1e-9
    for key in ("emb_average", "emb_extrema", "emb_greedy"):
        assert values[key] == pytest.approx(1.0)


def test_stage_persona_control_on_the_test_split(tmp_path, monkeypatch):
    from stages import evaluate

    write_prepared(tmp_path)
    test = read_parquet(tmp_path / "data/prepared/test.parquet").to_pydict()
    # copy the own persona's first sentence: scores against its own persona, less against another
    monkeypatch.chdir(_project(tmp_path, hypotheses=[p[0] for p in test["persona"]]))
    evaluate.main(["pednet", "--seed", "1"])
    values = json.loads(Path("reports/metrics/pednet/seed1.json").read_text())
    assert values["persona_f1"] > 0.5 and values["persona_f1_gain"] > 0.3
    assert values["persona_coverage"] > values["persona_coverage_shuffled"]


def test_controls_stage_and_their_evaluation(tmp_path, monkeypatch):
    from stages import controls, evaluate

    monkeypatch.chdir(_project(tmp_path))
    written = controls.main()
    assert [str(p) for p in written] == [
        "reports/generations/gold/control.parquet",
        "reports/generations/constant/control.parquet",
    ]
    test = read_parquet("data/prepared/test.parquet").to_pydict()
    gold = read_parquet(written[0])
    constant = read_parquet(written[1])
    assert gold.schema.equals(GENERATIONS) and constant.schema.equals(GENERATIONS)
    assert gold.column("example_id").to_pylist() == test["example_id"]
    assert gold.column("hypothesis").to_pylist() == test["response"] == gold.column("reference").to_pylist()
    assert gold.column("context").to_pylist() == test["query"]
    assert gold.column("persona").to_pylist() == test["persona"]
    assert set(constant.column("hypothesis").to_pylist()) == {"i love to read ."}
    assert gold.column("selected_persona").null_count == len(test["example_id"])
    first = Path(written[1]).read_bytes()
    controls.main()
    assert Path(written[1]).read_bytes() == first  # byte-stable

    for control in ("gold", "constant"):
        evaluate.main([control])
    gold_m = json.loads(Path("reports/metrics/gold/control.json").read_text())
    const_m = json.loads(Path("reports/metrics/constant/control.json").read_text())
    assert gold_m["bleu_1"] == pytest.approx(1.0) and gold_m["n_examples"] == len(test["example_id"])
    # the constant: 5 unigrams ("i love to read .") over 5 per turn; no persona of its own to use
    assert const_m["distinct_1"] == pytest.approx(5 / (5 * len(test["example_id"])))
    assert abs(const_m["persona_f1_gain"]) < 0.05 < gold_m["persona_f1_gain"]


def test_controls_stage_errors(tmp_path, monkeypatch):
    from stages import controls

    monkeypatch.chdir(_project(tmp_path))
    write_params(tmp_path, evaluate={"constant_reply": "I love to read."})
    with pytest.raises(InputError, match="not normalised text; write 'i love to read.'"):
        controls.main()
    write_params(tmp_path, evaluate={"constant_reply": ""})
    with pytest.raises(InputError, match="non-empty string"):
        controls.main()
    write_params(tmp_path, evaluate={"constant_reply": "hi ."})
    Path("data/prepared/test.parquet").unlink()
    with pytest.raises(InputError, match="test.parquet: file not found"):
        controls.main()


def test_stage_errors(tmp_path, monkeypatch):
    from stages import evaluate

    monkeypatch.chdir(_project(tmp_path))
    with pytest.raises(InputError, match="seq2seq/seed1.parquet: file not found"):
        evaluate.main(["seq2seq", "--seed", "1"])
    with pytest.raises(InputError, match="pednet/control.parquet: file not found"):
        evaluate.main(["pednet"])  # no --seed: a control's file
    with pytest.raises(InputError, match="run name"):
        evaluate.main(["../pednet", "--seed", "1"])
    with pytest.raises(InputError, match="--seed must be >= 0"):
        evaluate.main(["pednet", "--seed", "-1"])
    table = read_parquet(GEN)
    write_parquet(table.drop_columns(["reference"]), "reports/generations/gpmn/seed1.parquet")
    with pytest.raises(InputError, match="missing column"):
        evaluate.main(["gpmn", "--seed", "1"])
    write_parquet(pa.concat_tables([table, table.slice(0, 1)]), "reports/generations/postks/seed1.parquet")
    with pytest.raises(InputError, match="appears more than once"):
        evaluate.main(["postks", "--seed", "1"])
    write_parquet(table.slice(0, 0), "reports/generations/seq2seq/seed1.parquet")
    with pytest.raises(InputError, match="no generations"):
        evaluate.main(["seq2seq", "--seed", "1"])
    one_dialogue = table.filter(pc.starts_with(table.column("example_id"), "test-00000-"))
    write_parquet(one_dialogue, "reports/generations/seq2seq/seed2.parquet")
    with pytest.raises(InputError, match="seq2seq/seed2.parquet: no dialogue has a persona other than"):
        evaluate.main(["seq2seq", "--seed", "2"])
    assert not Path("reports/metrics/seq2seq").exists()
