"""ParlAI Persona-Chat parser: the format's variants and hostile input files.

Every hostile file either parses to the content asserted here or fails with one line
``<file>:<line>: <problem>``.
"""

from __future__ import annotations

import json

import pytest

from pipeline.io import InputError
from pipeline.preprocessing import parlai
from pipeline.schema import PREPARED, SILENCE
from tests.corpus import write_corpus

GOOD = (
    "1 your persona: i'm a nurse.\n"
    "2 your persona: i have a dog.\n"
    "3 __SILENCE__\thi there ! how are you ?\n"
    "4 good , and you ?\ti am great , i just walked my dog .\n"
    "5 what kind of dog ?\ta big one\n"
    "1 your persona: i like pizza.\n"
    "2 hello\thi hi hi i can't talk long\n"
)


def write(tmp_path, data: str | bytes, name: str = "train_self_original_no_cands.txt"):
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def parse(tmp_path, data, name: str = "train_self_original_no_cands.txt"):
    return parlai.read_dialogues(write(tmp_path, data, name))


def rows(tmp_path, data, name: str = "train_self_original_no_cands.txt"):
    return parlai.examples(parse(tmp_path, data, name), "train").to_pylist()


def fails(tmp_path, data, line: int | None, *words: str, name: str = "bad.txt") -> str:
    """Parsing fails with one line naming the file, the line and the problem."""
    path = write(tmp_path, data, name)
    with pytest.raises(InputError) as e:
        parlai.read_dialogues(path)
    msg = str(e.value)
    assert "\n" not in msg
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert msg.startswith(where), msg
    assert e.value.line == line
    for w in words:
        assert w in msg, msg
    return msg


# --- well-formed files ----------------------------------------------------------------


def test_good_file_rows(tmp_path):
    r = rows(tmp_path, GOOD)
    assert [x["example_id"] for x in r] == ["train-00000-00", "train-00000-01", "train-00000-02",
                                            "train-00001-00"]
    assert [x["turn"] for x in r] == [0, 1, 2, 0]
    assert r[0]["persona"] == ["i am a nurse", "i have a dog"]  # contraction, period stripped
    assert r[0]["query"] == SILENCE and r[0]["history"] == []
    assert r[1]["history"] == ["hi there ! how are you ?"]  # silence never enters the history
    assert r[2]["history"] == ["hi there ! how are you ?", "good , and you ?",
                               "i am great , i just walked my dog ."]
    assert r[2]["query"] == "what kind of dog ?" and r[2]["response"] == "a big one"
    assert r[3]["persona"] == ["i like pizza"] and r[3]["history"] == []
    assert r[3]["response"] == "hi i cant talk long"  # repeats collapsed, can't -> cant
    assert all(x["candidates"] == [] and x["partner_persona"] == [] for x in r)


def test_silent_bot_response_gets_no_row_and_stays_out_of_the_history(tmp_path):
    data = ("1 your persona: i like tea.\n"
            "2 hello !\t__SILENCE__\n"
            "3 are you there ?\tyes , sorry , i was making tea\n"
            "4 what kind ?\tgreen tea\n")
    d = parse(tmp_path, data)
    assert [t.line for t in parlai.silent_responses(d)] == [2]
    r = parlai.examples(d, "train").to_pylist()
    assert [x["example_id"] for x in r] == ["train-00000-01", "train-00000-02"]  # no row for turn 0
    assert r[0]["history"] == ["hello !"]  # the partner's words stay, the silence does not
    assert r[1]["history"] == ["hello !", "are you there ?", "yes , sorry , i was making tea"]
    assert all(SILENCE not in x["history"] and x["response"] != SILENCE for x in r)


def test_overlong_utterances_are_cut_with_a_named_warning(tmp_path):
    long = " ".join(f"w{i}" for i in range(30_000))  # ~170,000 characters
    data = ("1 your persona: i like tea.\n"
            f"2 hello\t{long}\n"
            f"3 {long}\tgreen tea\n"
            "4 ok\tfine then\n")
    d = parse(tmp_path, data)
    warnings = parlai.cut_overlong(d, "train.txt", 1000)
    assert len(warnings) == 1
    assert warnings[0] == (f"train.txt: 2 overlong utterances (over prepare.max_utterance_chars=1000 characters; "
                           f"the first at line 2, {len(long)} characters): cut to 1000 characters")
    assert all(len(t.query) <= 1000 and len(t.response) <= 1000 for t in d[0].turns)
    assert d[0].turns[0].response.startswith("w0 w1 ") and not d[0].turns[0].response.endswith(" ")
    assert d[0].turns[0].response.split()[-1] in long.split()  # cut at a word boundary
    assert d[0].turns[2].response == "fine then"
    assert parlai.cut_overlong(parse(tmp_path, GOOD), "x", 1000) == []


def test_table_has_the_prepared_schema(tmp_path):
    assert parlai.examples(parse(tmp_path, GOOD), "valid").schema.equals(PREPARED)


def test_crlf_bom_and_trailing_blanks_parse_the_same(tmp_path):
    want = rows(tmp_path, GOOD)
    assert rows(tmp_path, GOOD.replace("\n", "\r\n"), "crlf.txt") == want
    assert rows(tmp_path, b"\xef\xbb\xbf" + GOOD.encode(), "bom.txt") == want
    assert rows(tmp_path, GOOD + "   ", "no_newline_after_blank_line.txt") == want  # not an utterance line
    assert rows(tmp_path, GOOD.replace("1 your persona: i like", "\n\n1 your persona: i like") + "\n\n",
                "blank_lines.txt") == want


def test_with_candidates(tmp_path):
    data = ("1 your persona: i like cats.\n"
            "2 hi\thello there\t\tnice day|hello there|i like dogs\n"
            "3 cats ?\tyes cats\t\t|\n")
    r = rows(tmp_path, data, "train_self_original.txt")
    assert r[0]["candidates"] == ["nice day", "hello there", "i like dogs"]
    assert r[0]["response"] == "hello there"
    assert r[1]["candidates"] == ["", ""]


def test_with_candidates_and_empty_candidate_field(tmp_path):
    r = rows(tmp_path, "1 hi\thello\t\t\n", "train_self_original.txt")
    assert r[0]["candidates"] == [] and r[0]["persona"] == []


def test_other_and_both_variants(tmp_path):
    other = "1 partner's persona: i am a chef.\n2 hi\thello\n"
    r = rows(tmp_path, other, "train_other_original_no_cands.txt")
    assert r[0]["persona"] == [] and r[0]["partner_persona"] == ["i am a chef"]
    both = ("1 your persona: i fish.\n2 your persona: i run.\n"
            "3 partner's persona: i am a chef.\n4 hi\thello\n")
    r = rows(tmp_path, both, "train_both_revised_no_cands.txt")
    assert r[0]["persona"] == ["i fish", "i run"] and r[0]["partner_persona"] == ["i am a chef"]


def test_none_variant_has_no_persona(tmp_path):
    r = rows(tmp_path, "1 hi\thello\n2 how are you ?\tfine\n", "train_none_original_no_cands.txt")
    assert [x["persona"] for x in r] == [[], []] and r[1]["history"] == ["hi", "hello"]


def test_huge_line_parses(tmp_path):
    huge = " ".join(f"w{i}" for i in range(200_000))  # ~1.4 MB on one line
    r = rows(tmp_path, f"1 your persona: i talk a lot.\n2 {huge}\tok then\n")
    assert len(r[0]["query"].split()) == 200_000 and r[0]["response"] == "ok then"


def test_persona_period_only_sentence_is_left_out(tmp_path):
    r = rows(tmp_path, "1 your persona: .\n2 your persona: i swim.\n3 hi\thello\n")
    assert r[0]["persona"] == ["i swim"]


def test_generated_corpus_turn_counts(tmp_path):
    write_corpus(tmp_path, sizes=(5, 2, 2), seed=3)
    text = (tmp_path / "train_self_original_no_cands.txt").read_text()
    dialogues = parlai.read_dialogues(tmp_path / "train_self_original_no_cands.txt")
    assert len(dialogues) == 5
    assert sum(len(d.turns) for d in dialogues) == text.count("\t")
    assert all(4 <= len(d.persona) <= 5 for d in dialogues)


def test_file_name():
    assert parlai.file_name("train", "self", "original", False) == "train_self_original_no_cands.txt"
    assert parlai.file_name("valid", "both", "revised", True) == "valid_both_revised.txt"


def test_short_response_mask(tmp_path):
    table = parlai.examples(parse(tmp_path, "1 a\thi hi hi\n2 b\thi there\n3 c\t.\n"), "train")
    assert parlai.short_response_mask(table, 2) == [True, False, True]
    assert parlai.short_response_mask(table, 0) == [False, False, False]


# --- hostile files that must fail with file and line ---------------------------------------


# (id, file content, line named in the error or None, words the message must contain)
HOSTILE = [
    ("non-utf8", GOOD.encode().replace(b"a big one", b"a big \xff\xfe one"), 5, ["not UTF-8", r"\xff"]),
    ("latin1", "1 your persona: i like caf\u00e9s.\n2 hi\thello\n".encode("latin-1"), 1, ["not UTF-8"]),
    ("empty", b"", None, ["empty file"]),
    ("whitespace-only", "\n\r\n  \n", None, ["empty file"]),
    ("bom-only", b"\xef\xbb\xbf", None, ["empty file"]),
    ("missing-tab", GOOD.replace("what kind of dog ?\ta big one", "what kind of dog ? a big one"), 5,
     ["missing tab", "what kind of dog"]),
    ("no-number", GOOD.replace("4 good , and you ?", "good , and you ?"), 4, ["expected '<number> <text>'"]),
    ("number-only", "1 your persona: x.\n2\n", 2, ["expected '<number> <text>'"]),
    ("numbering-skip", GOOD.replace("5 what kind", "6 what kind"), 5, ["broken numbering", "expected 1 or 5"]),
    ("numbering-start", "2 hi\thello\n", 1, ["broken numbering", "expected 1"]),
    ("persona-after-dialogue", GOOD.replace("5 what kind of dog ?\ta big one", "5 your persona: i am late."), 5,
     ["persona line after", "starts at line 1"]),
    ("empty-persona", GOOD.replace("your persona: i have a dog.", "your persona:   "), 2, ["empty persona"]),
    ("empty-response", GOOD.replace("\ta big one", "\t "), 5, ["empty response"]),
    ("empty-query", GOOD.replace("5 what kind of dog ?\t", "5 \t"), 5, ["empty partner utterance"]),
    ("three-fields", GOOD.replace("\ta big one", "\ta big one\t"), 5, ["3 tab-separated fields"]),
    ("five-fields", GOOD.replace("\ta big one", "\ta\tb\tc\td"), 5, ["5 tab-separated fields"]),
    ("unknown-persona-prefix", GOOD.replace("2 your persona:", "2 their persona:"), 2,
     ["unknown persona prefix", "their persona:"]),
    ("persona-only-dialogue", "1 your persona: i swim.\n1 your persona: i run.\n2 hi\thello\n", 1,
     ["no utterances"]),
    ("cr-only-line-endings", GOOD.replace("\n", "\r"), 1, ["carriage return"]),
    # suspicious input that would parse: named, not swallowed
    ("truncated-last-line", GOOD[: GOOD.index(" talk long")], 7,
     ["truncated", "no newline", "i can't", "end the file with a newline"]),
    ("truncated-crlf", GOOD.replace("\n", "\r\n")[: -len(" long\r\n")], 7, ["truncated", "talk"]),
    ("candidates-after-none", GOOD.replace("\ta big one", "\ta big one\t\tx|a big one"), 5,
     ["4 ", "candidates", "mix"]),
]


@pytest.mark.parametrize("data,line,words", [pytest.param(*h[1:], id=h[0]) for h in HOSTILE])
def test_hostile_file_fails_with_file_and_line(tmp_path, data, line, words):
    fails(tmp_path, data, line, *words)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        parlai.read_dialogues(tmp_path / "nope.txt")


# --- mixed formats: one file, one format; the file name says which ---------------------------

CANDS = ("1 your persona: i like cats.\n"
         "2 hi\thello there\t\tnice day|hello there\n"
         "3 cats ?\tyes cats\t\tno|yes cats\n")


@pytest.mark.parametrize(
    "name,data,line,words",
    [
        # ParlAI's *_no_cands files have 2 fields per utterance line: a 4-field line is an error
        ("train_self_original_no_cands.txt", CANDS, 2, ["4 tab-separated fields", "*_no_cands", "mixed"]),
        ("valid_both_revised_no_cands.txt", GOOD.replace("\ta big one", "\ta big one\t\tx|y"), 5,
         ["4 tab-separated fields", "*_no_cands"]),
        # and its other files have candidates on every utterance line
        ("train_self_original.txt", GOOD, 3, ["2 tab-separated fields", "not *_no_cands", "mixed"]),
        ("test_other_revised.txt", CANDS + "4 and dogs ?\tno\n", 4, ["2 tab-separated fields", "not *_no_cands"]),
        # any other name: whichever format the first utterance line has, throughout
        ("mine.txt", CANDS + "4 and dogs ?\tno\n", 4, ["2 tab-separated fields, but line 2 has 4 (with candidates)", "mixes"]),
        ("mine.txt", GOOD.replace("\ta big one", "\ta big one\t\tx|y"), 5,
         ["4 tab-separated fields, but line 3 has 2 (no candidates)", "mixes"]),
    ],
)
def test_mixed_formats_name_file_and_line(tmp_path, name, data, line, words):
    fails(tmp_path, data, line, *words, name=name)


def test_one_format_throughout_parses(tmp_path):
    assert len(rows(tmp_path, CANDS, "mine.txt")) == 2
    assert len(rows(tmp_path, CANDS, "valid_self_original.txt")) == 2
    assert len(rows(tmp_path, GOOD, "mine_no_cands.txt")) == 4  # not a ParlAI name: either format


def test_candidates_in_name():
    assert parlai.candidates_in_name("train_self_original_no_cands.txt") is False
    assert parlai.candidates_in_name("valid_both_revised.txt") is True
    assert parlai.candidates_in_name("test_none_original.txt") is True
    assert parlai.candidates_in_name("mine.txt") is None
    assert parlai.candidates_in_name("train_self_original_no_cands.txt.bak") is None


def test_truncated_file_names_its_last_line(tmp_path):
    # the tester's case: a file cut mid-response, whose last response became "they are"
    data = GOOD + "3 what do your parents do ?\tthey are"
    msg = fails(tmp_path, data, 8, "truncated", "'3 what do your parents do ?\\tthey are'")
    assert "\n" not in msg
    assert len(rows(tmp_path, data + "\n", "complete.txt")) == 5  # with its newline it is complete


def test_messages_name_the_given_source_not_the_path(tmp_path):
    path = write(tmp_path, GOOD[:-1], "train_self_original_no_cands.txt")
    with pytest.raises(InputError) as e:
        parlai.read_dialogues(path, "../corpus/train_self_original_no_cands.txt")
    assert str(e.value).startswith("../corpus/train_self_original_no_cands.txt:7: truncated file?")
    assert str(tmp_path) not in str(e.value)
    with pytest.raises(InputError, match=r"^personachat\.tgz\(personachat/x\.txt\): file not found$"):
        parlai.read_dialogues(tmp_path / "nope.txt", "personachat.tgz(personachat/x.txt)")


# --- duplicated dialogues and dialogues without a persona ------------------------------------

PEN = "1 your persona: i have a pen.\n2 hello\tdo you write ?\n"


def check(tmp_path, data, **kw):
    """check_dialogues on a file named as a copy of ``src/train.txt``."""
    return parlai.check_dialogues(parse(tmp_path, data), "src/train.txt", **kw)


def check_fails(tmp_path, data, line, *words, **kw) -> str:
    with pytest.raises(InputError) as e:
        check(tmp_path, data, **kw)
    msg = str(e.value)
    assert msg.startswith(f"src/train.txt:{line}: ") and "\n" not in msg, msg
    assert all(w in msg for w in words), msg
    return msg


def test_clean_file_passes_unchanged(tmp_path):
    dialogues = parse(tmp_path, GOOD)
    kept, warnings = parlai.check_dialogues(dialogues, "x.txt")
    assert kept == dialogues and warnings == []


def test_duplicated_dialogue_is_an_error_by_default(tmp_path):
    # lines 8-12 repeat the dialogue of lines 1-5
    check_fails(tmp_path, GOOD + GOOD, 8, "duplicated dialogue", "same persona and utterances",
                "line 1", "prepare.duplicates")


@pytest.mark.parametrize("policy,ids", [("drop", ["train-00000", "train-00001", "train-00002"]),
                                        ("keep", ["train-00000", "train-00001", "train-00002", "train-00003",
                                                  "train-00004"])])
def test_duplicates_dropped_or_kept_with_a_count(tmp_path, policy, ids):
    kept, warnings = check(tmp_path, GOOD + PEN + GOOD[: GOOD.index("1 your persona: i like")] + PEN,
                           duplicates=policy)
    r = parlai.examples(kept, "train").to_pylist()
    assert sorted({x["dialogue_id"] for x in r}) == ids
    assert warnings == [f"src/train.txt: 2 of 5 dialogues duplicate an earlier one (same persona and "
                        f"utterances; first at line 10, a copy of line 1): {'dropped' if policy == 'drop' else 'kept'} "
                        f"(prepare.duplicates={policy})"]


def test_same_utterances_with_another_persona_are_not_duplicates(tmp_path):
    first = GOOD[: GOOD.index("1 your persona: i like")]
    kept, warnings = check(tmp_path, first + first.replace("i'm a nurse.", "i'm a chef."))
    assert len(kept) == 2 and warnings == []
    kept, warnings = check(tmp_path, PEN + PEN.replace("do you write", "do you draw"))
    assert len(kept) == 2 and warnings == []


@pytest.mark.parametrize(
    "persona,data,line,words",
    [
        # no persona lines at all: named at its first utterance
        ("self", GOOD + "1 hi\thello\n2 how are you ?\tfine\n", 8, ["dialogue without persona",
                                                                       "no 'your persona:' lines"]),
        # only the partner's persona: the self variant still has none
        ("self", GOOD + "1 partner's persona: i am a chef.\n2 hi\thello\n", 9,
         ["no 'your persona:' lines", "dialogue starts at line 8", "prepare.persona=self"]),
        ("other", "1 your persona: i run.\n2 hi\thello\n", 2, ["no \"partner's persona:\" lines"]),
        ("both", "1 your persona: i run.\n2 hi\thello\n", 2, ["no \"partner's persona:\" lines"]),
        # sentences that normalise to nothing are no persona either
        ("self", "1 your persona: .\n2 hi\thello\n", 2, ["empty after normalisation"]),
    ],
)
def test_dialogue_without_persona_is_an_error_by_default(tmp_path, persona, data, line, words):
    check_fails(tmp_path, data, line, *words, "prepare.no_persona", persona=persona)


def test_none_variant_needs_no_persona(tmp_path):
    kept, warnings = check(tmp_path, "1 hi\thello\n", persona="none")
    assert len(kept) == 1 and warnings == []


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_dialogues_without_persona_dropped_or_kept_with_a_count(tmp_path, policy):
    data = GOOD + "1 hi\thello\n" + PEN + "1 yo\tsup\n"
    kept, warnings = check(tmp_path, data, no_persona=policy)
    r = parlai.examples(kept, "train").to_pylist()
    if policy == "drop":
        assert [x["query"] for x in r if x["turn"] == 0 and x["persona"] == []] == []
        assert len(kept) == 3
    else:
        assert [x["query"] for x in r if x["persona"] == []] == ["hi", "yo"]
    done = "dropped" if policy == "drop" else "kept (their rows have an empty persona)"
    assert warnings == [f"src/train.txt: 2 of 5 dialogues without persona (prepare.persona=self; the first "
                        f"at line 8): {done} (prepare.no_persona={policy})"]


def test_both_policies_together(tmp_path):
    data = GOOD + "1 hi\thello\n" + "1 hi\thello\n"
    kept, warnings = check(tmp_path, data, no_persona="keep", duplicates="drop")
    assert len(kept) == 3 and len(warnings) == 2
    assert "2 of 4 dialogues without persona" in warnings[0] and "1 of 4 dialogues duplicate" in warnings[1]
    kept, warnings = check(tmp_path, data, no_persona="drop")  # dropped ones are not duplicates
    assert len(kept) == 2 and len(warnings) == 1
    with pytest.raises(ValueError):
        check(tmp_path, data, duplicates="warn")


# --- where a copy came from ------------------------------------------------------------------


def test_source_name_from_fetch_manifest(tmp_path):
    assert parlai.read_sources(tmp_path) == {}
    copy = write(tmp_path, GOOD, "train_self_original_no_cands.txt")
    assert parlai.source_name(copy, {}) == str(copy)
    (tmp_path / "sources.json").write_text(json.dumps({"source": "../corpus", "files": {
        copy.name: {"source": "../corpus/sub/train_self_original_no_cands.txt", "size": len(GOOD)}}}))
    sources = parlai.read_sources(tmp_path)
    assert parlai.source_name(copy, sources) == "../corpus/sub/train_self_original_no_cands.txt"
    assert parlai.source_name(tmp_path / "other.txt", sources) == str(tmp_path / "other.txt")
    copy.write_text(GOOD + PEN)  # edited since fetch: its lines are no longer the source's
    assert parlai.source_name(copy, sources) == str(copy)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"source": "x"}', '{"source": "x", "files": {"a": 1}}'])
def test_a_bad_manifest_is_named(tmp_path, text):
    (tmp_path / "sources.json").write_text(text)
    with pytest.raises(InputError, match=r"sources\.json: .*rerun the fetch stage"):
        parlai.read_sources(tmp_path)
