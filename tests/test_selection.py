from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation import selection
from pipeline.io import InputError


def test_every_selector_is_scored_the_same_way():
    labels = [0, 1, None, 2, None]
    chosen = [0, 2, None, None, 1]
    got = selection.accuracy(chosen, labels)
    # labelled turns: 0 right, 1 wrong, 2 (None chosen) wrong -> 1/3; all turns: + the None row right -> 2/5
    assert got == {"accuracy_labelled": round(1 / 3, 4), "accuracy_all": 0.4, "none_chosen": 0.4, "labelled_turns": 3}


def test_chance_is_the_mean_of_one_over_m_on_labelled_turns():
    personas = [["a", "b"], ["a", "b", "c", "d"], ["x"]]
    assert selection.chance(personas, [0, 3, None]) == round((1 / 2 + 1 / 4) / 2, 4)


def test_word_overlap_picks_the_sentence_sharing_most_content_words():
    persona = ["i like to ski", "my dog is a poodle named rex", "i love pizza"]
    assert selection.overlap_choice("do you have a dog ? mine is a poodle", persona) == 1
    assert selection.overlap_choice("hello there !", persona) is None  # nothing shared: no persona


def test_agreement_counts_none_as_a_class_and_separately_where_both_label():
    got = selection.agreement([0, None, 1, 2], [0, None, 2, None])
    assert got["agreement"] == 0.5 and got["agreement_where_both_labelled"] == 0.5
    assert got["both_labelled"] == 2 and got["none_share"] == [0.25, 0.5]


def test_authors_labels_slot_zero_is_none(tmp_path):
    path = tmp_path / "demo.dev2"
    path.write_text("hi\thello\tNone**i ski**i cook\t2\t0\nq\tr\tNone**i ski\t0\t1 2\n")
    assert selection.read_author_labels(path) == {("hi", "hello"): "i cook", ("q", "r"): None}
    path.write_text("hi\thello\tNone**i ski\t5\t0\n")
    with pytest.raises(InputError, match="line 1: label 5 outside its 2 candidates"):
        selection.read_author_labels(path)


def test_retrieval_takes_the_best_query_cosine():
    sims = [[0.1, 0.5, 0.2], [0.3, 0.3, 0.1], [-0.2, -0.1], []]
    assert selection.retrieval_choices(sims) == [1, 0, 1, None]  # first on ties; no persona, no choice


def test_render_lists_every_selector_and_labeller():
    report = {"selectors": {"chance": {"accuracy_labelled": 0.2268},
                            "pednet": {"summary": {k: {"mean": 0.28, "sd": 0.01, "n_seeds": 3}
                                                   for k in ("accuracy_labelled", "accuracy_all", "none_chosen")}}},
              "labellers": {"authors": {"valid": {"turns": 10, "agreement": 0.6, "agreement_where_both_labelled": 0.75,
                                                  "both_labelled": 4, "none_share": [0.3, 0.4]}}}}
    text = selection.render(report)
    assert "| chance | 22.7 | — | — |" in text
    assert "| pednet | 28.0 ± 1.0 (3 seeds) |" in text
    assert "| authors | valid | 10 | 60.0 | 75.0 | 30.0 / 40.0 |" in text


def test_the_bilinear_selector_alone_is_a_row_where_its_prior_was_written(tmp_path, monkeypatch):
    from pipeline.io import read_parquet, write_parquet
    from pipeline.preprocessing import persona_prior as pp
    from tests.model_inputs import write_model_inputs

    data = write_model_inputs(tmp_path, k_max=3)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the project's params.yaml (seeds)
    assert "bilinear_minilm_query" not in selection.analyse([], None, data)["selectors"]
    rows = read_parquet(data / "prepared" / "test.parquet", ["example_id", "persona"]).to_pydict()
    labels = read_parquet(data / "persona_labels" / "test.parquet", ["optimal_persona"]).column(0).to_pylist()
    # logits that put each turn's label first (the last sentence where None)
    logits = [np.eye(len(p), dtype=np.float32)[len(p) - 1 if y is None else y] for p, y in
              zip(rows["persona"], labels, strict=True)]
    write_parquet(pp.to_table(rows["example_id"], logits), data / "persona_prior" / "test.parquet")
    row = selection.analyse([], None, data)["selectors"]["bilinear_minilm_query"]
    assert row["accuracy_labelled"] == 1.0 and row["none_chosen"] == 0.0
    write_parquet(pp.to_table(rows["example_id"][1:], logits[1:]), data / "persona_prior" / "test.parquet")
    with pytest.raises(InputError, match="example ids differ from the test split's"):
        selection.analyse([], None, data)
