"""The chat command (pipeline/chat.py), driven through stdin on tiny models trained here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import chat as chat_module
from pipeline import schema
from pipeline.chat import (
    Chat,
    SpecificWords,
    find_project,
    main,
    normalize_persona,
    normalize_utterance,
    read_persona_file,
    resolve_checkpoint,
)
from pipeline.dataset import Vocab, load_split
from pipeline.decode import generate_rows
from pipeline.io import InputError, read_parquet, run_stage
from pipeline.train import load_checkpoint, load_trained, train
from tests.model_inputs import tiny_params, write_model_inputs

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
MODELS = ("seq2seq", "gpmn", "postks", "pednet")
PERSONA = ["I have a big dog.", "i work as a nurse at the hospital .", "My favorite food is pizza."]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A run directory: data/ of the tiny corpus and checkpoints/<model>/seed1/best.pt of each
    model (the layout of the train stages, seed 1)."""
    root = tmp_path_factory.mktemp("chat")
    data = write_model_inputs(root, k_max=5)
    for name in MODELS:
        # seq2seq and PEDNet long enough to say words and (PEDNet) pick a persona sentence
        epochs = 8 if name in ("seq2seq", "pednet") else 2
        params = tiny_params(train={"epochs": epochs, "lr": 0.01}, pednet={"k": 2},
                             postks={"bow_warmup_epochs": 0})
        train(name, params, data_dir=data, checkpoint_dir=root / "checkpoints" / name / "seed1",
              live_dir=root / "live" / name / "seed1")
    return root


@pytest.fixture(scope="module")
def vocab(root) -> Vocab:
    return Vocab.load(root / "data" / "prepared" / "vocab.parquet")


def chat(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.chat", *args], cwd=cwd, input=stdin, env=env,
                          capture_output=True, text=True, timeout=120)


def replies(stdout: str) -> list[str]:
    return [ln[len("bot> "):] for ln in stdout.splitlines() if ln.startswith("bot> ")]


# -- through stdin ---------------------------------------------------------------------
def test_seq2seq_by_run_name_replies_and_quits(root):
    out = chat(root, "--model", "seq2seq",
               stdin="Do you have pets?\n/reset\n/history\nwhat do you like to eat?\n/quit\nnever read\n")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    said = replies(out.stdout)
    assert len(said) == 2 and all(s and s != "(empty response)" for s in said)
    assert "you> do you have pets ?" not in out.stdout  # the echo is the typed line...
    assert "you> Do you have pets?" in out.stdout
    assert "(history cleared)" in out.stdout and "(no history)" in out.stdout
    assert "never read" not in out.stdout  # nothing after /quit
    assert "[persona" not in out.stdout  # seq2seq selects nothing


def test_pednet_shows_the_selected_persona_every_turn(root):
    args = ["--model", "checkpoints/pednet/seed1/best.pt", "--beam", "2"]
    for p in PERSONA:
        args += ["--persona", p]
    turns = ["Do you have any pets?", "what do you do for work?", "What do you like to eat?"]
    out = chat(root, *args, stdin="\n".join([*turns, "/persona", ""]))  # ends at EOF, no /quit
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    bot = [i for i, ln in enumerate(lines) if ln.startswith("bot> ")]
    assert len(bot) == len(turns)
    normalised = [normalize_persona(p) for p in PERSONA]
    picked = []
    for i in bot:
        m = re.fullmatch(r"     \[persona (\d+): (.*)\]|     \[persona: none selected\]", lines[i + 1])
        assert m, lines[i + 1]
        if m.group(1):
            assert normalised[int(m.group(1)) - 1] == m.group(2)
            picked.append(m.group(2))
        assert lines[i + 2].startswith("     [specific words: ")
    assert picked  # the trained CDNet picks a sentence, not only "none"
    assert "  1. i have a big dog" in lines and "  3. my favorite food is pizza" in lines


def test_persona_typed_at_the_prompt(root):
    out = chat(root, "--model", "pednet", stdin="I have a big dog.\n\nDo you have pets?\n/quit\n")
    assert out.returncode == 0, out.stderr
    assert "persona 1> I have a big dog." in out.stdout and "  1. i have a big dog" in out.stdout
    assert len(replies(out.stdout)) == 1
    assert "[persona 1: i have a big dog]" in out.stdout or "[persona: none selected]" in out.stdout


def test_persona_file(tmp_path):
    persona = tmp_path / "persona.txt"
    persona.write_text("# a ParlAI persona\nyour persona: i love reading mystery books .\n\nI drive an old red car.\n")
    assert read_persona_file(persona) == ["i love reading mystery books", "i drive an old red car"]
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    with pytest.raises(InputError, match="no persona sentences"):
        read_persona_file(tmp_path / "blank.txt")
    with pytest.raises(InputError, match="cannot read"):
        read_persona_file(tmp_path / "missing.txt")


def test_run_name_and_seed_resolve_to_the_seed_directory(tmp_path):
    for run, seed in (("seq2seq", 1), ("seq2seq", 2), ("pednet", 3)):
        (tmp_path / run / f"seed{seed}").mkdir(parents=True)
        (tmp_path / run / f"seed{seed}" / "best.pt").write_bytes(b"")
    assert resolve_checkpoint("seq2seq", tmp_path) == tmp_path / "seq2seq" / "seed1" / "best.pt"  # default seed 1
    assert resolve_checkpoint("seq2seq", tmp_path, seed=2) == tmp_path / "seq2seq" / "seed2" / "best.pt"
    assert resolve_checkpoint("pednet", tmp_path, seed=3) == tmp_path / "pednet" / "seed3" / "best.pt"
    # a run directory (one seed's) and a file are taken as they are, whatever --seed says
    seed2 = tmp_path / "seq2seq" / "seed2"
    assert resolve_checkpoint(str(seed2), tmp_path, seed=1) == seed2 / "best.pt"
    assert resolve_checkpoint(str(seed2 / "best.pt"), tmp_path, seed=3) == seed2 / "best.pt"
    with pytest.raises(InputError, match=rf"no trained model 'pednet' in {tmp_path.resolve()} \(trained: "
                                         r"pednet \(seed3\), seq2seq \(seed1\), seq2seq \(seed2\); "):
        resolve_checkpoint("pednet", tmp_path)
    with pytest.raises(InputError, match=rf"looked in {tmp_path.resolve() / 'none'}, which does not exist"):
        resolve_checkpoint("pednet", tmp_path / "none")


def test_missing_seed_of_a_run_exits_2_with_one_line(root):
    out = chat(root, "--model", "seq2seq", "--seed", "2")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: checkpoints/seq2seq/seed2/best.pt: no trained model 'seq2seq' in "
                                 f"{root / 'checkpoints'} (trained: ")
    assert "seq2seq (seed1)" in out.stderr and out.stderr.count("\n") == 1


# -- from any directory -----------------------------------------------------------------
def test_chat_from_a_subdirectory_finds_the_projects_checkpoints_and_data(root):
    deep = root / "reports" / "deep"
    deep.mkdir(parents=True, exist_ok=True)
    for model in ("seq2seq", "checkpoints/seq2seq/seed1/best.pt"):  # a run name; a path from the project root
        out = chat(deep, "--model", model, stdin="Do you have pets?\n/quit\n")
        assert out.returncode == 0, out.stderr
        assert f"from {root / 'checkpoints' / 'seq2seq' / 'seed1' / 'best.pt'} on cpu" in out.stdout
        assert len(replies(out.stdout)) == 1


def test_chat_outside_any_project_says_where_it_looked(tmp_path):
    """No dvc.yaml or checkpoints/ above the current directory: this checkout's checkpoints/,
    and an untrained run name names that directory in one line."""
    out = chat(tmp_path, "--model", "no_such_run")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    looked = REPO / "checkpoints"
    assert out.stderr.startswith(f"error: {looked / 'no_such_run' / 'seed1' / 'best.pt'}: no trained model "
                                 "'no_such_run'")
    assert f" in {looked} (trained: " in out.stderr or f"looked in {looked}, which does not exist" in out.stderr


def test_find_project(tmp_path, monkeypatch):
    (tmp_path / "proj" / "a" / "b").mkdir(parents=True)
    (tmp_path / "proj" / "dvc.yaml").write_text("stages: {}\n")
    assert find_project(tmp_path / "proj" / "a" / "b") == tmp_path / "proj"
    (tmp_path / "copied_run" / "checkpoints" / "pednet").mkdir(parents=True)  # a run directory, no dvc.yaml
    assert find_project(tmp_path / "copied_run" / "checkpoints" / "pednet") == tmp_path / "copied_run"
    monkeypatch.chdir(tmp_path / "proj" / "a")
    assert find_project() == tmp_path / "proj"
    # nowhere inside a project: this module's checkout, or (not a checkout) the start itself
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(chat_module, "PACKAGE_ROOT", tmp_path / "proj")
    assert find_project(tmp_path / "elsewhere") == tmp_path / "proj"
    monkeypatch.setattr(chat_module, "PACKAGE_ROOT", tmp_path / "copied_run")
    assert find_project(tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_bad_checkpoint_exits_2_with_one_line(root):
    out = chat(root, "--model", "checkpoints/nothere/best.pt")
    assert out.returncode == 2
    assert out.stderr == "error: checkpoints/nothere/best.pt: no such file\n"
    assert out.stdout == ""


# -- replies are the test pipeline's ---------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_reply_equals_generation_of_the_same_turn(root, vocab, name):
    """Chat encodes a turn exactly as load_split + generate_rows do (same reply, same pick)."""
    model = load_trained(root / "checkpoints" / name / "seed1" / "best.pt", vocab)
    data = root / "data"
    ds = load_split("test", vocab, type(model).data_config(model.params), data)
    rows = generate_rows(model, ds, batch_size=1, max_len=12)
    specific = read_parquet(data / "pmi" / "test.parquet", columns=["specific_words"]).column(0).to_pylist()
    for i in range(6):
        c = Chat(model, vocab, list(ds.texts["persona"][i]), max_len=12)
        c.specific = lambda query, persona, i=i: specific[i]  # the stored words, not PMI statistics
        r = c.reply(ds.texts["query"][i])
        assert r.text == rows[i]["hypothesis"]
        assert (None if r.selected is None or r.selected < 0 else r.selected) == rows[i]["selected_persona"]
        assert (r.selected is not None) == (name in ("postks", "pednet"))


def test_history_is_kept_and_reset(root, vocab):
    c = Chat(load_trained(root / "checkpoints" / "seq2seq" / "seed1" / "best.pt", vocab), vocab)
    c.reply("hi how are you today ?")
    r = c.reply("do you have pets ?")
    assert c.history == [("hi how are you today ?", c.history[0][1]), ("do you have pets ?", r.text)]
    c.reset()
    assert c.history == []


def test_persona_model_needs_a_persona(root, vocab):
    c = Chat(load_trained(root / "checkpoints" / "gpmn" / "seed1" / "best.pt", vocab), vocab)
    with pytest.raises(ValueError, match="persona"):
        c.reply("do you have pets ?")


# -- text and specific words -----------------------------------------------------------
def test_typed_text_is_normalised_like_training_data():
    assert normalize_utterance("Don't you LOVE dogs?!") == "do not you love dogs ? !"
    assert normalize_utterance("  I'm  fine... thanks ") == "i am fine . thanks"
    assert normalize_persona("your persona: I'm a nurse.") == "i am a nurse"
    assert normalize_persona("i can't swim .") == "i cant swim"


def test_specific_words_from_training_pmi(tmp_path):
    # Hand count over 4 training turns: PMI(dog, dogs) = ln(P(dog | dogs) / P(dog)) = ln(1 / 0.5)
    # = 0.69; "like" occurs with every persona (PMI 0); "cars" never with "dog" (contributes 0).
    rows = {"query": ["do you like dogs ?"] * 2 + ["do you like cars ?"] * 2,
            "persona": [["i have a dog"]] * 2 + [["i drive a car"]] * 2}
    pq.write_table(pa.table(rows), tmp_path / "train.parquet")
    sw = SpecificWords.fit(tmp_path / "train.parquet", {"threshold": 0.6, "max_words": 5, "min_count": 1})
    assert sw("do you like dogs ?", ["i have a dog"]) == ["dogs"]
    assert sw("do you like cars ?", ["i have a dog"]) == []
    assert sw("dogs or cars ?", ["i have a dog", "i drive a car"]) == ["cars", "dogs"]  # tie: by word
    strict = SpecificWords.fit(tmp_path / "train.parquet", {"threshold": 0.7, "max_words": 5, "min_count": 1})
    assert strict("do you like dogs ?", ["i have a dog"]) == []


# -- errors: one line, exit code 2 -----------------------------------------------------
def _fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        run_stage(lambda: main(list(argv)))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_error_messages(root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(root)
    ck = load_checkpoint(root / "checkpoints" / "seq2seq" / "seed1" / "best.pt")

    assert (f"no trained model 'transformer' in {root / 'checkpoints'} (trained: gpmn (seed1), pednet (seed1), "
            "postks (seed1), seq2seq (seed1); run `dvc repro` in the project)") in _fails(capsys, "--model", "transformer")
    (tmp_path / "empty").mkdir()
    assert "directory without a best.pt" in _fails(capsys, "--model", str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    assert _fails(capsys, "--model", str(tmp_path / "notes.txt")).endswith("notes.txt: not a PyTorch checkpoint")

    torch.save({"kind": "msn", "config": {}, "state_dict": {}}, tmp_path / "msn.pt")
    assert "not a generator checkpoint" in _fails(capsys, "--model", str(tmp_path / "msn.pt"))
    torch.save({**ck, "model_name": "vhred"}, tmp_path / "unknown.pt")
    assert "checkpoint of an unknown model 'vhred'" in _fails(capsys, "--model", str(tmp_path / "unknown.pt"))
    torch.save({**ck, "model_params": {**ck["model_params"], "hidden": 8}}, tmp_path / "hidden.pt")
    assert "has shape" in _fails(capsys, "--model", str(tmp_path / "hidden.pt"))
    pk = load_checkpoint(root / "checkpoints" / "pednet" / "seed1" / "best.pt")
    torch.save({**pk, "model_params": {**pk["model_params"], "selection_prior": "bilinear"},
                "model": {**pk["model"], "prior_scale": torch.tensor(1.0)}}, tmp_path / "bilinear.pt")
    assert "reads the bilinear prior, written by `python -m stages.persona_prior`" in _fails(
        capsys, "--model", str(tmp_path / "bilinear.pt"), "--persona", "i ski")

    # the model's data directory with a vocabulary of other data (fewer tokens)
    other = tmp_path / "other" / "prepared"
    other.mkdir(parents=True)
    tokens = read_parquet(root / "data" / "prepared" / "vocab.parquet").slice(0, 20)
    pq.write_table(tokens.cast(schema.VOCAB), other / "vocab.parquet")
    msg = _fails(capsys, "--model", "seq2seq", "--data", str(tmp_path / "other"))
    assert f"vocabulary of {ck['model']['embeddings.embedding.weight'].shape[0]} tokens" in msg
    assert "vocab.parquet: missing" in _fails(capsys, "--model", "seq2seq", "--data", str(tmp_path))


def test_a_missing_run_names_the_one_stage_that_trains_it_with_its_time(tmp_path):
    import json

    from tests.dvc_project import make_project

    repo = make_project(tmp_path)
    (repo / "checkpoints").mkdir()
    (repo / "reports").mkdir()
    record = {"wall_seconds": 540.0, "cpu": "Some CPU"}
    stages = {"train@pednet-2": record, "fetch": {"wall_seconds": 60.0}, "persona_labels": {"wall_seconds": 120.0},
              "msn": {"wall_seconds": 900.0}}  # msn is not upstream of PEDNet
    (repo / "reports" / "stage_times.json").write_text(json.dumps({"stages": stages}))
    with pytest.raises(InputError) as e:
        resolve_checkpoint("pednet", repo / "checkpoints", seed=1, project=repo)
    assert str(e.value).endswith("(trained: none; train it with `dvc repro train@pednet-1` (about 9 min on "
                                 "Some CPU, measured; plus about 3 min for the stages it needs, if not yet run))")
    with pytest.raises(InputError, match=r"trained: none; no stage of .*dvc.yaml trains 'no_such_run' seed 1\)$"):
        resolve_checkpoint("no_such_run", repo / "checkpoints", seed=1, project=repo)
    with pytest.raises(InputError, match=r"train it with `dvc repro train_gcl@seq2seq_history-1`\)$"):
        resolve_checkpoint("seq2seq_history_gcl", repo / "checkpoints", seed=1, project=repo)  # no time known
