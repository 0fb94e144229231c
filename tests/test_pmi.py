import math

import pytest

from pipeline.io import read_parquet
from pipeline.preprocessing import pmi
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


# Leave-dialogue-out: seven training examples in four dialogues (every turn of a dialogue
# shares its persona, as in Persona-Chat).
LDO_Q = ["dogs pizza", "dogs", "dogs", "pizza", "guitar", "pizza guitar", "pizza"]
LDO_P = [["dog"], ["dog"], ["dog", "park"], ["dog", "park"], ["band"], ["band"], ["park"]]
LDO_D = ["d0", "d0", "d1", "d1", "d2", "d2", "d3"]


def _scores(stats, queries, personas, min_count, dialogue_ids=None):
    rows, words, scores = pmi.score(stats, queries, personas, min_count, dialogue_ids)
    return {(int(r), stats.context_vocab[w]): s for r, w, s in zip(rows, words, scores, strict=True)}


def test_leave_dialogue_out_matches_hand_computation():
    stats = pmi.fit(LDO_Q, LDO_P, LDO_D)
    got = _scores(stats, LDO_Q, LDO_P, min_count=1, dialogue_ids=LDO_D)
    # All 7: cx dogs 3, pizza 4, guitar 2; cp dog 4, park 3, band 2;
    # co dogs-dog 3, dogs-park 1, pizza-dog 2, pizza-park 2, pizza-band 1, guitar-band 2.
    # Example 0 without d0 (examples 0, 1): N 5, cx dogs 1, pizza 3; cp dog 2; co dogs-dog 1, pizza-dog 1
    #   dogs: ln((1/1) / (2/5)) = ln 2.5;  pizza: ln((1/3) / (2/5)) = ln(5/6)
    assert got[(0, "dogs")] == pytest.approx(math.log(5 / 2))
    assert got[(0, "pizza")] == pytest.approx(math.log(5 / 6))
    assert got[(1, "dogs")] == pytest.approx(math.log(5 / 2))
    # Example 2 without d1 (examples 2, 3): N 5, cx dogs 2; cp dog 2, park 0; co dogs-dog 2, dogs-park 0
    #   dogs: ln((2/2) / (2/5)) + 0 (park never left with dogs) = ln 2.5
    assert got[(2, "dogs")] == pytest.approx(math.log(5 / 2))
    # Example 3 without d1: cx pizza 3 (examples 0, 5, 6); cp dog 2, park 1; co pizza-dog 1, pizza-park 1
    #   pizza: ln((1/3) / (2/5)) + ln((1/3) / (1/5)) = ln(5/6) + ln(5/3)
    assert got[(3, "pizza")] == pytest.approx(math.log(5 / 6) + math.log(5 / 3))
    # Example 5 without d2 (examples 4, 5): pizza-band 0 -> 0; guitar: cx 0 < min_count -> skipped
    assert got[(5, "pizza")] == 0.0
    # Example 6 without d3 (example 6): N 6, cx pizza 3; cp park 2; co pizza-park 1: ln((1/3) / (2/6)) = 0
    assert got[(6, "pizza")] == pytest.approx(0.0)
    assert set(got) == {(0, "dogs"), (0, "pizza"), (1, "dogs"), (2, "dogs"), (3, "pizza"), (5, "pizza"), (6, "pizza")}


def test_leave_dialogue_out_min_count_uses_the_remaining_count():
    stats = pmi.fit(LDO_Q, LDO_P, LDO_D)
    got = _scores(stats, LDO_Q, LDO_P, min_count=2, dialogue_ids=LDO_D)
    # dogs is left 1 time for d0 (skipped) but 2 times for d1 (kept); guitar 0 times for d2
    assert set(got) == {(0, "pizza"), (2, "dogs"), (3, "pizza"), (5, "pizza"), (6, "pizza")}
    words, scores = pmi.specific_words(stats, LDO_Q, LDO_P, 0.5, 5, 2, LDO_D)
    assert words == [[], [], ["dogs"], [], [], [], []]  # ln 2.5 = 0.92; ln(25/18) = 0.33
    assert scores[2] == pytest.approx([math.log(5 / 2)])


def test_all_statistics_and_held_out_examples_ignore_dialogues():
    with_ids, without = pmi.fit(LDO_Q, LDO_P, LDO_D), pmi.fit(LDO_Q, LDO_P)
    old = _scores(without, LDO_Q, LDO_P, min_count=1)
    assert _scores(with_ids, LDO_Q, LDO_P, min_count=1) == old
    # all: example 0, dogs: ln((3/3) / (4/7)); pizza: ln((2/4) / (4/7))
    assert old[(0, "dogs")] == pytest.approx(math.log(7 / 4))
    assert old[(0, "pizza")] == pytest.approx(math.log(7 / 8))
    # a dialogue not in the statistics (valid/test) has nothing to leave out
    assert _scores(with_ids, LDO_Q, LDO_P, min_count=1, dialogue_ids=["x"] * len(LDO_Q)) == pytest.approx(old)


def test_leave_dialogue_out_needs_dialogue_statistics():
    with pytest.raises(ValueError, match="dialogue ids"):
        pmi.score(pmi.fit(LDO_Q, LDO_P), LDO_Q, LDO_P, 1, LDO_D)
    with pytest.raises(ValueError, match="6 dialogue ids for 7"):
        pmi.fit(LDO_Q, LDO_P, LDO_D[:-1])


def _brute_force(queries, personas, dialogues, min_count, leave_out):
    """PMI(wx, P) of every example, counted example by example in plain Python."""
    xs = [pmi.context_words(q) for q in queries]
    ps = [pmi.persona_words(p) for p in personas]
    total_cx = {w: sum(w in x for x in xs) for w in set().union(*xs)}
    out = {}
    for e, (x, p) in enumerate(zip(xs, ps, strict=True)):
        others = [i for i in range(len(xs)) if not (leave_out and dialogues[i] == dialogues[e])]
        n = len(others)
        for wx in x:
            cx = sum(wx in xs[i] for i in others)
            if total_cx[wx] < min_count or cx < min_count:
                continue
            s = 0.0
            for wp in p:
                co = sum(wx in xs[i] and wp in ps[i] for i in others)
                if co:
                    s += math.log((co / cx) / (sum(wp in ps[i] for i in others) / n))
            out[(e, wx)] = s
    return out


@pytest.mark.parametrize("leave_out", [False, True])
def test_vectorised_scores_match_brute_force_on_generated_dialogues(tmp_path, leave_out):
    train = read_parquet(write_prepared(tmp_path) / "data/prepared/train.parquet").to_pydict()
    q, p, d = train["query"], train["persona"], train["dialogue_id"]
    stats = pmi.fit(q, p, d)
    got = _scores(stats, q, p, min_count=2, dialogue_ids=d if leave_out else None)
    want = _brute_force(q, p, d, min_count=2, leave_out=leave_out)
    assert len(want) > 50 and got.keys() == want.keys()
    assert got == pytest.approx(want)


def test_stage_statistics_change_training_examples_only(tmp_path, monkeypatch):
    write_prepared(tmp_path)
    left_out = _run_stage(tmp_path, monkeypatch, threshold=1.0, min_count=2, statistics="leave_dialogue_out")
    everything = _run_stage(tmp_path, monkeypatch, threshold=1.0, min_count=2, statistics="all")
    assert left_out["valid"] == everything["valid"] and left_out["test"] == everything["test"]
    assert left_out["train"] != everything["train"]


def test_stage_unknown_statistics_is_an_input_error(tmp_path, monkeypatch):
    from pipeline.io import InputError

    write_prepared(tmp_path)
    with pytest.raises(InputError, match="pmi.statistics: expected one of transductive, leave_persona_out, leave_dialogue_out, all, got 'none'"):
        _run_stage(tmp_path, monkeypatch, statistics="none")


def test_leave_persona_out_groups_dialogues_that_share_a_persona():
    dialogue_ids = ["d0", "d0", "d1", "d2"]
    personas = [["i like cats", "i swim"], ["i like cats", "i swim"], ["i swim", "i like cats"], ["i ski"]]
    groups = pmi.left_out_groups("leave_persona_out", dialogue_ids, personas)
    assert groups[0] == groups[1] == groups[2] != groups[3]  # d1 has d0's persona, reordered
    assert pmi.left_out_groups("leave_dialogue_out", dialogue_ids, personas) == dialogue_ids
    assert pmi.left_out_groups("all", dialogue_ids, personas) is None


def test_log_base_scales_scores_and_the_threshold_is_in_its_units():
    stats = pmi.fit(TRAIN_Q, TRAIN_P)
    ln_words, ln_scores = pmi.specific_words(stats, TRAIN_Q, TRAIN_P, threshold=0.0, max_words=5, min_count=1)
    words, scores = pmi.specific_words(stats, TRAIN_Q, TRAIN_P, 0.0, 5, 1, None, log_base=10)
    assert words == ln_words
    assert [s for x in scores for s in x] == pytest.approx([s / math.log(10) for x in ln_scores for s in x])
    # guitar: ln 5 + ln 2.5 = 2.53 nats = 1.10 in log10: passes 1.0 in nats and in log10, not 1.2 in log10
    assert "guitar" in pmi.specific_words(stats, TRAIN_Q, TRAIN_P, 1.0, 5, 1, None, 10)[0][3]
    assert "guitar" not in pmi.specific_words(stats, TRAIN_Q, TRAIN_P, 1.2, 5, 1, None, 10)[0][3]


def test_stage_transductive_statistics_score_words_unseen_in_training(tmp_path, monkeypatch):
    import json

    from pipeline.io import write_parquet

    write_prepared(tmp_path)
    valid = read_parquet(tmp_path / "data/prepared/valid.parquet").to_pylist()
    # a word no training query has, in a valid query: train-only statistics cannot score it
    valid[0]["query"] = valid[0]["query"] + " zeppelin"
    import pyarrow as pa

    write_parquet(pa.Table.from_pylist(valid, schema=read_parquet(tmp_path / "data/prepared/valid.parquet").schema),
                  tmp_path / "data/prepared/valid.parquet")
    _run_stage(tmp_path, monkeypatch, threshold=0.5, min_count=1, statistics="transductive", log_base=10)
    words = read_parquet(tmp_path / "data/pmi/valid.parquet").column("specific_words").to_pylist()
    assert "zeppelin" in words[0]  # seen once, with this persona: P(wp | wx) = 1 for every persona word
    report = json.loads((tmp_path / "reports/pmi.json").read_text())
    assert report["statistics"] == "transductive" and report["log_base"] == 10
    for split in SPLITS:
        cov = report["splits"][split]
        got = read_parquet(tmp_path / f"data/pmi/{split}.parquet").column("specific_words").to_pylist()
        assert cov["examples"] == len(got)
        assert cov["with_any"] == round(sum(1 for w in got if w) / len(got), 4)
        assert cov["max"] == max(map(len, got)) <= 4
    _run_stage(tmp_path, monkeypatch, threshold=0.5, min_count=1, statistics="all", log_base=10)
    words = read_parquet(tmp_path / "data/pmi/valid.parquet").column("specific_words").to_pylist()
    assert "zeppelin" not in words[0]


def test_stage_bad_log_base_is_a_params_error(tmp_path, monkeypatch):
    from pipeline.io import InputError

    write_prepared(tmp_path)
    with pytest.raises(InputError, match="pmi.log_base"):
        _run_stage(tmp_path, monkeypatch, log_base=3)


def test_calibration_reads_the_authors_format_and_scores_agreement(tmp_path):
    from pipeline.io import InputError
    from pipeline.preprocessing import pmi_calibration as cal

    write_prepared(tmp_path)
    prepared = tmp_path / "data/prepared"
    valid = read_parquet(prepared / "valid.parquet").to_pylist()
    test = read_parquet(prepared / "test.parquet").to_pylist()
    authors = tmp_path / "authors"
    authors.mkdir()
    # the authors mark token 1 of the first valid query; the second has a lone "0": no word
    first, second = valid[0], valid[1]
    lines = [f"{first['query']}\t{first['response']}\tp1**p2\t1\t1",
             f"{second['query']}\t{second['response']}\tp1\t0\t0"]
    (authors / "demo.dev2").write_text("\n".join(lines) + "\n")
    (authors / "demo.test2").write_text(f"{test[0]['query']}\t{test[0]['response']}\tp\t0\t0\n")
    got = cal.read_authors(authors / "demo.dev2")
    assert got[(first["query"], first["response"])] == {first["query"].split()[1]}
    assert got[(second["query"], second["response"])] == set()
    report = cal.calibrate(authors, prepared)
    keys = {(r["query"], r["response"]) for r in (first, second, test[0])}  # generated turns repeat
    matched = [(r["query"], r["response"]) for r in valid + test if (r["query"], r["response"]) in keys]
    assert report["matched_turns"] == len(matched) >= 3
    marked = sum(k == (first["query"], first["response"]) for k in matched)
    assert report["authors"]["with_any"] == round(marked / len(matched), 4)
    assert len(report["options"]) == 2 * 3 * 2 * 2
    assert cal.agreement([["a", "b"], []], [{"a"}, {"c"}]) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    (authors / "demo.test2").write_text("only\ttwo fields\n")
    with pytest.raises(InputError, match="line 1: expected 5 tab-separated fields"):
        cal.calibrate(authors, prepared)
