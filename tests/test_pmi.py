import math

import pytest

from pipeline import pmi
from pipeline.io import read_parquet
from pipeline.schema import KEY, PMI, SILENCE, SPLITS
from tests.prepared import write_params, write_prepared

# Four training examples (query, persona). Content words only count: "i", "the", "?", ":)"
# and the special are dropped.
TRAIN_Q = ["i like the dogs and pizza ?", "dogs :)", "pizza", "guitar drums", SILENCE]
TRAIN_P = [["i have a dog", "the park"], ["my dog"], ["i cook"], ["band", "park"], ["i cook"]]
N = 5


def test_context_and_persona_words_drop_stop_words_punctuation_and_specials():
    assert pmi.context_words("i like the dogs and pizza ? :) <KEY>") == {"like", "dogs", "pizza"}
    assert pmi.context_words(SILENCE) == set()
    assert pmi.persona_words(["i have a dog .", "the park"]) == {"dog", "park"}


def test_pmi_matches_hand_computation():
    stats = pmi.fit(TRAIN_Q, TRAIN_P)
    rows, words, scores = pmi.score(stats, TRAIN_Q, TRAIN_P, min_count=1)
    got = {(int(r), stats.context_vocab[w]): s for r, w, s in zip(rows, words, scores, strict=True)}
    # cx: dogs 2, pizza 2, like 1; cp: dog 2, park 2, cook 2, band 1; N = 5
    # PMI(dog, dogs) = ln((2/2) / (2/5)); PMI(park, dogs) = ln((1/2) / (2/5))
    assert got[(0, "dogs")] == pytest.approx(math.log(5 / 2) + math.log(5 / 4))
    assert got[(1, "dogs")] == pytest.approx(math.log(5 / 2))
    # PMI(dog, pizza) = PMI(park, pizza) = ln((1/2) / (2/5))
    assert got[(0, "pizza")] == pytest.approx(2 * math.log(5 / 4))
    # PMI(cook, pizza) = ln((1/2) / (2/5))
    assert got[(2, "pizza")] == pytest.approx(math.log(5 / 4))
    # PMI(band, guitar) = ln(1 / (1/5)), PMI(park, guitar) = ln(1 / (2/5))
    assert got[(3, "guitar")] == pytest.approx(math.log(5) + math.log(5 / 2))
    assert got[(3, "drums")] == got[(3, "guitar")]
    assert not any(r == 4 for r, _ in got)  # __silence__ has no context words


def test_unseen_pairs_contribute_zero_and_unknown_words_are_skipped():
    stats = pmi.fit(TRAIN_Q, TRAIN_P)
    # guitar: band seen (ln 5), cook never with guitar (0); dogs: neither seen -> 0; "violin" unknown
    rows, words, scores = pmi.score(stats, ["guitar dogs violin"], [["band cook"]], min_count=1)
    got = {stats.context_vocab[w]: s for w, s in zip(words, scores, strict=True)}
    assert got == pytest.approx({"guitar": math.log(5), "dogs": 0.0})


def test_threshold_max_words_ties_and_min_count():
    stats = pmi.fit(TRAIN_Q, TRAIN_P)
    words, scores = pmi.specific_words(stats, TRAIN_Q, TRAIN_P, threshold=1.0, max_words=5, min_count=1)
    # example 0: like (2 ln 2.5 = 1.833) and dogs (1.139) pass; pizza (0.446) does not
    assert words[0] == ["like", "dogs"]
    assert scores[0] == pytest.approx([2 * math.log(5 / 2), math.log(5 / 2) + math.log(5 / 4)])
    assert words[2] == []  # pizza: ln(5/4) < 1
    assert words[3] == ["drums", "guitar"]  # equal scores: by word
    words, _ = pmi.specific_words(stats, TRAIN_Q, TRAIN_P, threshold=1.0, max_words=1, min_count=1)
    assert words[0] == ["like"] and words[3] == ["drums"]
    words, _ = pmi.specific_words(stats, TRAIN_Q, TRAIN_P, threshold=1.0, max_words=5, min_count=2)
    assert words[0] == ["dogs"] and words[3] == []  # like, guitar, drums seen once
    words, _ = pmi.specific_words(stats, TRAIN_Q, TRAIN_P, threshold=1e9, max_words=5, min_count=1)
    assert words == [[]] * N


def test_mask_query_replaces_every_occurrence():
    assert pmi.mask_query("dogs and more dogs ?", ["dogs"]) == f"{KEY} and more {KEY} ?"
    assert pmi.mask_query("hi there", []) == "hi there"


def _run_stage(root, monkeypatch, **overrides):
    from stages import pmi as stage

    write_params(root, pmi=overrides)
    monkeypatch.chdir(root)
    stage.main()
    return {s: (root / f"data/pmi/{s}.parquet").read_bytes() for s in SPLITS}


def test_stage_writes_every_split_deterministically(tmp_path, monkeypatch):
    write_prepared(tmp_path)
    first = _run_stage(tmp_path, monkeypatch, threshold=1.0, min_count=2)
    for split in SPLITS:
        out = read_parquet(tmp_path / f"data/pmi/{split}.parquet")
        prepared = read_parquet(tmp_path / f"data/prepared/{split}.parquet")
        assert out.schema.equals(PMI)
        assert out.column("example_id").to_pylist() == prepared.column("example_id").to_pylist()
        rows = out.to_pylist()
        for row, query in zip(rows, prepared.column("query").to_pylist(), strict=True):
            assert len(row["specific_words"]) <= 5
            assert row["specific_scores"] == sorted(row["specific_scores"], reverse=True)
            assert all(s >= 1.0 for s in row["specific_scores"])
            assert row["masked_query"].split().count(KEY) == sum(
                t in row["specific_words"] for t in query.split()
            )
        assert any(r["specific_words"] for r in rows)
    assert _run_stage(tmp_path, monkeypatch, threshold=1.0, min_count=2) == first  # byte-identical


def test_stage_missing_input_is_an_input_error(tmp_path, monkeypatch):
    from pipeline.io import InputError

    with pytest.raises(InputError, match="train.parquet"):
        _run_stage(tmp_path, monkeypatch)
