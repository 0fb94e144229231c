"""prepare: file choice per split, filter and its log, vocabulary, failures that write
nothing, and byte-identical reruns."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.io import InputError
from pipeline.preprocessing.vocab import build_vocab, count_tokens, load_vocab, token_ids, training_texts
from pipeline.schema import PREPARED, SILENCE, SPECIALS, SPLITS, VOCAB
from stages import prepare
from tests.corpus import write_corpus
from tests.test_parlai import HOSTILE

PARAMS = {"persona": "self", "variant": "original", "candidates": False, "min_response_tokens": 2,
          "max_vocab": 20000, "min_count": 1}
TINY = ("1 your persona: i like dogs.\n2 your persona: i run.\n"
        "3 __SILENCE__\thi hi hi\n4 hello , do you run ?\tyes i run every day\n")


def setup_repo(root, params=None, corpus=True):
    (root / "params.yaml").write_text(yaml.safe_dump({"prepare": {**PARAMS, **(params or {})}}))
    if corpus:
        write_corpus(root / "data" / "raw", sizes=(6, 3, 3), seed=1)
    return root


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return setup_repo(tmp_path)


def run_prepare(root, env=None):
    env = {**os.environ, "PIPELINE_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


# --- in process ------------------------------------------------------------------------


def test_prepare_writes_splits_and_vocab(repo, caplog):
    raw = {s: (repo / f"data/raw/{s}_self_original_no_cands.txt").read_text() for s in SPLITS}
    with caplog.at_level(logging.INFO):
        prepare.main()
    assert sorted(os.listdir(repo / "data/prepared")) == ["test.parquet", "train.parquet",
                                                         "valid.parquet", "vocab.parquet"]
    for split in SPLITS:
        table = pq.read_table(repo / f"data/prepared/{split}.parquet")
        assert table.schema.remove_metadata().equals(PREPARED)
        assert table.num_rows == raw[split].count("\t")  # corpus responses all have >= 2 tokens
        assert table.column("example_id")[0].as_py() == f"{split}-00000-00"
        assert f"{split}: read" in caplog.text
    train = pq.read_table(repo / "data/prepared/train.parquet").to_pylist()
    assert train[0]["query"] == SILENCE  # the corpus opens every other train dialogue with silence
    vocab = load_vocab(repo / "data/prepared/vocab.parquet")
    assert tuple(vocab[: len(SPECIALS)]) == SPECIALS
    assert {"dog", "tomatoes", "pizza"} <= set(vocab) and len(vocab) == len(set(vocab))
    assert pq.read_table(repo / "data/prepared/vocab.parquet").schema.remove_metadata().equals(VOCAB)


def test_short_responses_are_dropped_and_logged(repo, caplog):
    (repo / "data/raw/train_self_original_no_cands.txt").write_text(TINY)
    with caplog.at_level(logging.INFO):
        prepare.main()
    train = pq.read_table(repo / "data/prepared/train.parquet").to_pylist()
    assert [r["response"] for r in train] == ["yes i run every day"]
    assert train[0]["example_id"] == "train-00000-01" and train[0]["turn"] == 1
    assert train[0]["history"] == ["hi"]  # the dropped turn stays in the history
    assert "2 bot turns" in caplog.text and "dropped 1" in caplog.text
    assert "hi" in load_vocab(repo / "data/prepared/vocab.parquet")  # and in the vocabulary


@pytest.mark.parametrize(
    "params,name",
    [
        ({"candidates": True}, "{split}_self_original.txt"),
        ({"persona": "both", "variant": "revised"}, "{split}_both_revised_no_cands.txt"),
        ({"persona": "other"}, "{split}_other_original_no_cands.txt"),
        ({"persona": "none"}, "{split}_none_original_no_cands.txt"),
    ],
)
def test_file_per_split_follows_params(repo, params, name):
    setup_repo(repo, params, corpus=False)
    persona = {"none": "", "other": "1 partner's persona: i cook.\n", "both": "1 your persona: i run.\n"
               "2 partner's persona: i cook.\n"}.get(params.get("persona", "self"), "1 your persona: i run.\n")
    cands = "\t\ta|b" if "_no_cands" not in name else ""  # ParlAI's *_no_cands files have 2 fields
    n = persona.count("\n") + 1
    for split in SPLITS:
        (repo / "data/raw" / name.format(split=split)).write_text(f"{persona}{n} {split} hello\tthe {split} reply"
                                                                  f"{cands}\n")
    prepare.main()
    rows = pq.read_table(repo / "data/prepared/valid.parquet").to_pylist()
    assert rows[0]["query"] == "valid hello" and rows[0]["candidates"] == (["a", "b"] if cands else [])


def test_falls_back_to_the_other_candidates_form(repo, caplog):
    setup_repo(repo, {"candidates": True}, corpus=False)  # only *_no_cands files exist
    prepare.main()
    assert "train_self_original.txt not found, using" in caplog.text
    assert pq.read_table(repo / "data/prepared/test.parquet").num_rows > 0


def test_missing_split_names_the_expected_file(repo):
    os.remove(repo / "data/raw/valid_self_original_no_cands.txt")
    with pytest.raises(InputError) as e:
        prepare.main()
    assert str(e.value).startswith("data/raw/valid_self_original_no_cands.txt: missing valid split")
    assert not (repo / "data/prepared").exists()


@pytest.mark.parametrize("data,line,words", [pytest.param(*h[1:], id=h[0]) for h in HOSTILE])
def test_every_hostile_file_writes_nothing(repo, data, line, words):
    path = "data/raw/valid_self_original_no_cands.txt"
    (repo / path).write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(InputError) as e:
        prepare.main()
    assert str(e.value).startswith(f"{path}{'' if line is None else f':{line}'}: ")
    assert all(w in str(e.value) for w in words)
    assert os.listdir(repo / "data") == ["raw"]


def test_bad_param_value(repo):
    setup_repo(repo, {"persona": "yours"}, corpus=False)
    with pytest.raises(InputError, match="prepare.persona: expected one of self, other, both, none, got 'yours'"):
        prepare.main()


# --- vocabulary -------------------------------------------------------------------------


def test_overlong_and_silent_lines_are_logged(repo, caplog):
    path = repo / "data/raw/train_self_original_no_cands.txt"
    long = "word " * 20_000  # 100,000 characters
    path.write_text(path.read_text() + f"1 your persona: i like tea.\n2 hello !\t__SILENCE__\n3 hi\t{long}\n")
    with caplog.at_level(logging.INFO):
        prepare.main()
    assert ("1 overlong utterance (over prepare.max_utterance_chars=1000 characters; the first at line "
            in caplog.text)
    assert "1 bot responses are __SILENCE__" in caplog.text and "no row, not in the history" in caplog.text
    train = pq.read_table(repo / "data/prepared/train.parquet").to_pylist()
    assert all(SILENCE not in r["history"] for r in train)


def test_vocab_order_limits_and_specials():
    counts = Counter({"b": 3, "a": 3, "c": 5, "d": 1, SILENCE: 2})
    vocab = build_vocab(counts, max_size=len(SPECIALS) + 3).to_pydict()
    assert vocab["token"] == list(SPECIALS) + ["c", "a", "b"]  # count desc, then token asc
    assert vocab["count"][SPECIALS.index(SILENCE)] == 2 and vocab["count"][-3:] == [5, 3, 3]
    assert build_vocab(counts, 100, min_count=3).column("token").to_pylist()[-3:] == ["c", "a", "b"]
    with pytest.raises(ValueError):
        build_vocab(counts, 3)


def test_training_texts_count_each_utterance_once(tmp_path):
    from pipeline.preprocessing import parlai

    path = tmp_path / "t.txt"
    path.write_text(TINY)
    table = parlai.examples(parlai.read_dialogues(path), "train")
    counts = count_tokens(training_texts(table))
    assert counts["run"] == 3  # persona once, the query, the response; not again via history
    assert counts["hi"] == 1 and counts[SILENCE] == 1


def test_token_ids():
    assert token_ids(["<pad>", "x"]) == {"<pad>": 0, "x": 1}


# --- as a subprocess: failures write nothing, reruns are byte-identical ---------------------


@pytest.mark.parametrize(
    "case,line,problem",
    [
        ("broken numbering", 5, "broken numbering"),
        ("non-utf8", 3, "not UTF-8"),
        ("missing split", None, "missing test split"),
        ("empty file", None, "empty file"),
    ],
)
def test_stage_fails_with_one_line_and_writes_nothing(tmp_path, case, line, problem):
    setup_repo(tmp_path)
    path = "data/raw/test_self_original_no_cands.txt"
    if case == "broken numbering":
        (tmp_path / path).write_text(TINY + "3 extra\tline\n")  # numbered 1..4, then 3
    elif case == "non-utf8":
        (tmp_path / path).write_bytes(TINY.encode().replace(b"hi hi", b"h\xe9"))
    elif case == "missing split":
        os.remove(tmp_path / path)
    else:
        (tmp_path / path).write_bytes(b"")
    r = run_prepare(tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}{'' if line is None else f':{line}'}: "), r.stderr
    assert problem in last
    assert sorted(os.listdir(tmp_path / "data")) == ["raw"]  # no data/prepared, no temporary folder


def test_stage_is_byte_identical_across_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, seed in ((a, "1"), (b, "2")):
        root.mkdir()
        setup_repo(root)
        r = run_prepare(root, env={"PYTHONHASHSEED": seed})  # set order must not leak
        assert r.returncode == 0, r.stderr
    for name in os.listdir(a / "data/prepared"):
        assert (a / "data/prepared" / name).read_bytes() == (b / "data/prepared" / name).read_bytes(), name


# --- suspicious input: named, not swallowed ---------------------------------------------------

FIRST_DIALOGUE_END = "\n1 "  # where the corpus's second dialogue starts


def first_dialogue(text: str) -> str:
    return text[: text.index(FIRST_DIALOGUE_END) + 1]


def test_duplicated_dialogue_stops_prepare_by_default(repo):
    path = repo / "data/raw/train_self_original_no_cands.txt"
    text = path.read_text()
    path.write_text(text + first_dialogue(text))
    with pytest.raises(InputError) as e:
        prepare.main()
    line = text.count("\n") + 1
    assert str(e.value).startswith(f"data/raw/train_self_original_no_cands.txt:{line}: duplicated dialogue: "
                                   "same persona and utterances as the dialogue at line 1")
    assert os.listdir(repo / "data") == ["raw"]


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_duplicates_param_warns_with_the_count(repo, caplog, policy):
    setup_repo(repo, {"duplicates": policy}, corpus=False)
    path = repo / "data/raw/train_self_original_no_cands.txt"
    text = path.read_text()
    path.write_text(text + first_dialogue(text) * 2)
    with caplog.at_level(logging.INFO):
        prepare.main()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 8 dialogues duplicate an earlier one" in warnings[0], warnings
    assert f"prepare.duplicates={policy}" in warnings[0]
    train = pq.read_table(repo / "data/prepared/train.parquet")
    dialogues = len(set(train.column("dialogue_id").to_pylist()))
    assert dialogues == (6 if policy == "drop" else 8)
    assert f"train: read 8 dialogues ({dialogues} kept)" in caplog.text


@pytest.mark.parametrize("policy", [None, "drop", "keep"])
def test_dialogue_without_persona(repo, caplog, policy):
    if policy:
        setup_repo(repo, {"no_persona": policy}, corpus=False)
    path = repo / "data/raw/valid_self_original_no_cands.txt"
    text = path.read_text()
    path.write_text(text + "1 hi\thello there\n2 how are you ?\ti am fine thanks\n")
    line = text.count("\n") + 1
    if policy is None:  # an error by default, at its first utterance
        with pytest.raises(InputError) as e:
            prepare.main()
        assert str(e.value).startswith(f"data/raw/valid_self_original_no_cands.txt:{line}: dialogue without "
                                       "persona: no 'your persona:' lines")
        assert os.listdir(repo / "data") == ["raw"]
        return
    with caplog.at_level(logging.INFO):
        prepare.main()
    assert (f"valid_self_original_no_cands.txt: 1 of 4 dialogues without persona (prepare.persona=self; the "
            f"first at line {line})") in caplog.text
    valid = pq.read_table(repo / "data/prepared/valid.parquet").to_pylist()
    assert sum(r["persona"] == [] for r in valid) == (0 if policy == "drop" else 2)


def test_the_none_variant_needs_no_persona(repo):
    setup_repo(repo, {"persona": "none"}, corpus=False)
    for split in SPLITS:
        (repo / f"data/raw/{split}_none_original_no_cands.txt").write_text("1 hi\thello there\n")
    prepare.main()
    assert pq.read_table(repo / "data/prepared/test.parquet").column("persona").to_pylist() == [[]]


def test_bad_policy_value(repo):
    setup_repo(repo, {"duplicates": "warn"}, corpus=False)
    with pytest.raises(InputError, match="prepare.duplicates: expected one of error, drop, keep, got 'warn'"):
        prepare.main()


# --- as DVC runs it: fetch, then prepare; messages name the user's file, not data/raw ------------


def fetch_then_prepare(tmp_path, source: str, params=None):
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump({"fetch": {"source": source},
                                                      "prepare": {**PARAMS, **(params or {})}}))
    env = {**os.environ, "PIPELINE_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return repo, run_prepare(repo)


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


VALID = "valid_self_original_no_cands.txt"


def _suspicious(text: str) -> dict:
    """case -> (the corrupted valid file, the line named, words of the message)"""
    n = text.count("\n")
    lines = text.split("\n")
    utterance = next(i for i, s in enumerate(lines, 1) if "\t" in s)
    lines[utterance - 1] += "\t\ta|b"  # the first utterance line with candidates
    return {
        "truncated": (text[:-4], n, ["truncated file?", "no newline"]),
        "duplicated": (text + first_dialogue(text), n + 1, ["duplicated dialogue", "at line 1"]),
        "no persona": (text + "1 hi\thello there\n", n + 1, ["dialogue without persona"]),
        "candidates in a no_cands file": ("\n".join(lines), utterance,
                                          ["4 tab-separated fields", "*_no_cands", "mixed formats"]),
        "broken numbering": (text + "5 hi\thello\n", n + 1, ["broken numbering"]),
    }


@pytest.mark.parametrize("case", ["truncated", "duplicated", "no persona", "candidates in a no_cands file",
                                  "broken numbering"])
def test_stage_names_the_users_file_and_line(tmp_path, case):
    corpus = write_corpus(tmp_path / "corpus", sizes=(6, 3, 3), seed=1)
    text = (corpus / VALID).read_text()
    data, line, words = _suspicious(text)[case]
    (corpus / VALID).write_text(data)
    repo, r = fetch_then_prepare(tmp_path, "../corpus")
    last = one_error_line(r)
    assert last.startswith(f"error: ../corpus/{VALID}:{line}: "), r.stderr
    assert all(w in last for w in words), last
    assert "data/raw" not in last
    assert sorted(os.listdir(repo / "data")) == ["raw"]  # nothing written


def test_stage_names_the_archive_member_and_line(tmp_path):
    from tests.test_fetch import make_tgz

    corpus = write_corpus(tmp_path / "corpus", sizes=(6, 3, 3), seed=1)
    text = (corpus / VALID).read_text()
    data, line, _ = _suspicious(text)["no persona"]
    members = {f"personachat/{p.name}": p.read_bytes() for p in corpus.iterdir()}
    members[f"personachat/{VALID}"] = data.encode()
    make_tgz(tmp_path / "personachat.tgz", members)
    _, r = fetch_then_prepare(tmp_path, "../personachat.tgz")
    assert one_error_line(r).startswith(
        f"error: ../personachat.tgz(personachat/{VALID}):{line}: dialogue without persona: "), r.stderr


def test_stage_missing_split_names_the_source(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", sizes=(6, 3, 3), seed=1)
    os.remove(corpus / VALID)
    _, r = fetch_then_prepare(tmp_path, "../corpus")
    assert one_error_line(r) == (f"error: ../corpus: no file {VALID}: missing valid split (params "
                                 "prepare.persona=self, variant=original, candidates=False)")


def test_stage_warnings_name_the_users_file(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", sizes=(6, 3, 3), seed=1)
    text = (corpus / VALID).read_text()
    (corpus / VALID).write_text(text + first_dialogue(text))
    repo, r = fetch_then_prepare(tmp_path, "../corpus", {"duplicates": "drop"})
    assert r.returncode == 0, r.stderr
    assert (f"WARNING ../corpus/{VALID}: 1 of 4 dialogues duplicate an earlier one (same persona and "
            f"utterances; first at line {text.count(chr(10)) + 1}, a copy of line 1): dropped "
            "(prepare.duplicates=drop)") in r.stderr
    assert len(set(pq.read_table(repo / "data/prepared/valid.parquet").column("dialogue_id").to_pylist())) == 3
