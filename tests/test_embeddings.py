import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.io import InputError, read_parquet
from pipeline.preprocessing.embeddings import align, load_pretrained, train_word2vec
from pipeline.preprocessing.vocab import training_texts
from pipeline.schema import EMBEDDINGS, PAD, SPECIALS
from tests.prepared import write_params, write_prepared

REPO = Path(__file__).resolve().parents[1]
SMALL = {"dim": 8, "epochs": 2}


def _vectors(root: Path) -> tuple[list[str], np.ndarray]:
    t = read_parquet(root / "data/embeddings/vectors.parquet")
    assert t.schema.equals(EMBEDDINGS)
    return t.column("token").to_pylist(), np.array(t.column("vector").to_pylist(), dtype=np.float32)


def _run(root: Path, monkeypatch, **overrides) -> None:
    from stages import embeddings as stage

    write_params(root, embeddings={**SMALL, **overrides})
    monkeypatch.chdir(root)
    stage.main()


def test_word2vec_rows_follow_the_vocabulary(tmp_path, monkeypatch):
    write_prepared(tmp_path)
    _run(tmp_path, monkeypatch)
    vocab = read_parquet(tmp_path / "data/prepared/vocab.parquet").column("token").to_pylist()
    tokens, m = _vectors(tmp_path)
    assert tokens == vocab and m.shape == (len(vocab), 8)
    assert not m[vocab.index(PAD)].any()
    assert np.isfinite(m).all() and np.all(np.linalg.norm(m[1:], axis=1) > 0)
    # every non-special token is training text, so all of them got a Word2Vec vector
    trained = train_word2vec(
        training_texts(read_parquet(tmp_path / "data/prepared/train.parquet")), dim=8, epochs=2
    )
    assert set(vocab[len(SPECIALS) :]) <= set(trained)
    i = {t: n for n, t in enumerate(tokens)}
    assert np.array_equal(m[i["dog"]], trained["dog"])


def test_align_fills_missing_tokens_deterministically():
    vocab = [PAD, "<unk>", "cat", "dog"]
    vectors = {"cat": np.ones(4, np.float32), PAD: np.full(4, 7, np.float32)}
    m1, covered = align(vocab, vectors, 4, seed=3)
    m2, _ = align(vocab, vectors, 4, seed=3)
    m3, _ = align(vocab, vectors, 4, seed=4)
    assert covered == 1 and np.array_equal(m1, m2) and not np.array_equal(m1, m3)
    assert not m1[0].any() and np.array_equal(m1[2], np.ones(4))
    assert 0 < np.abs(m1[3]).max() < 1  # small next to the known vectors


def _glove(path: Path, header: bool = False) -> Path:
    rows = ["dog 1 0 0 0 0 0 0 0", "pizza 0 1 0 0 0 0 0 0", "zzz 0 0 1 0 0 0 0 0"]
    path.write_text(("3 8\n" if header else "") + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("header", [False, True], ids=["glove", "word2vec"])
def test_pretrained_text_file_is_used(tmp_path, monkeypatch, header):
    write_prepared(tmp_path)
    path = _glove(tmp_path / "vectors.txt", header)
    _run(tmp_path, monkeypatch, pretrained=str(path))
    tokens, m = _vectors(tmp_path)
    i = {t: n for n, t in enumerate(tokens)}
    assert m[i["dog"]].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert m[i["pizza"]].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert np.abs(m[i["park"]]).max() < 0.5  # not in the file: small random


def test_bad_pretrained_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_pretrained(tmp_path / "missing.txt", 8)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="empty"):
        load_pretrained(tmp_path / "empty.txt", 8)
    (tmp_path / "ragged.txt").write_text("dog 1 0 0\npizza 0 1\n")
    with pytest.raises(InputError, match="malformed GloVe"):
        load_pretrained(tmp_path / "ragged.txt", 3)
    (tmp_path / "binary.txt").write_bytes(b"dog 1 0\n\xff\xfe 0 1\n")
    with pytest.raises(InputError, match="UTF-8"):
        load_pretrained(tmp_path / "binary.txt", 2)
    with pytest.raises(InputError, match="vectors are 8-d but embeddings.dim is 300"):
        load_pretrained(_glove(tmp_path / "ok.txt"), 300)


def test_word2vec_is_byte_identical_across_processes_and_hash_seeds(tmp_path):
    write_prepared(tmp_path)
    write_params(tmp_path, embeddings=SMALL)
    outs = []
    for hash_seed in ("1", "2"):
        env = {
            **os.environ,
            "PYTHONHASHSEED": hash_seed,
            "PYTHONPATH": str(REPO),
            "PIPELINE_NO_PROGRESS": "1",
        }
        subprocess.run(
            [sys.executable, "-m", "stages.embeddings"],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
        outs.append((tmp_path / "data/embeddings/vectors.parquet").read_bytes())
    assert outs[0] == outs[1]
