import numpy as np
import pytest

from pipeline.io import InputError, read_parquet, write_parquet
from pipeline.preprocessing import congeneric
from pipeline.schema import CONGENERIC, KEY, SILENCE, SPLITS
from tests.prepared import write_params, write_prepared


def test_top_k_orders_by_score_then_lower_index():
    scores = np.array(
        [
            [0.5, 0.9, 0.5, 0.9, 0.1, 0.5],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        ],
        dtype=np.float32,
    )
    cols, picked = congeneric.top_k(scores, 4)
    assert cols.tolist() == [[1, 3, 0, 2], [0, 1, 2, 3], [5, 4, 3, 2]]
    assert picked[0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5])
    cols, _ = congeneric.top_k(scores, 10)  # k larger than the row: every column once
    assert sorted(cols[0].tolist()) == list(range(6))


TRAIN = [
    f"do you have a {KEY} ?",
    f"do you have a {KEY} ?",
    "what do you do for work ?",
    "what do you do for fun ?",
    SILENCE,
    SILENCE,
    "i like pizza",
]


def test_retrieve_excludes_self_and_ranks_similar_first(monkeypatch):
    index = congeneric.CongenericIndex(TRAIN)
    monkeypatch.setattr(congeneric, "_BLOCK_CELLS", 2 * len(TRAIN))  # several blocks of 2 queries
    rows, scores = congeneric.retrieve(index, TRAIN, k=3, exclude_self=True)
    assert rows.shape == (len(TRAIN), 3) and rows.dtype == np.int32
    assert all(i not in r for i, r in enumerate(rows.tolist()))
    assert rows[0, 0] == 1 and rows[1, 0] == 0 and scores[0, 0] == pytest.approx(1.0)
    assert rows[2, 0] == 3 and rows[3, 0] == 2
    assert rows[4, 0] == 5 and rows[5, 0] == 4  # silent openings find each other
    assert np.all(np.diff(scores, axis=1) <= 0)
    # no self-exclusion for another split; unknown tokens -> all zero -> rows 0, 1, 2
    rows, scores = congeneric.retrieve(
        index, ["what do you do for work ?", "zebra", ""], k=3, exclude_self=False
    )
    assert rows[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0)
    assert rows[1].tolist() == [0, 1, 2] and rows[2].tolist() == [0, 1, 2]
    assert scores[1:].tolist() == [[0.0] * 3] * 2


def test_retrieve_caps_k_at_the_training_size():
    index = congeneric.CongenericIndex(TRAIN[:3])
    rows, _ = congeneric.retrieve(index, TRAIN[:3], k=20, exclude_self=True)
    assert rows.shape == (3, 2)


def _run(root, monkeypatch, k_max=5):
    from stages import congeneric as stage
    from stages import pmi as pmi_stage

    write_params(root, pmi={"threshold": 1.0, "min_count": 2}, congeneric={"k_max": k_max})
    monkeypatch.chdir(root)
    if not (root / "data/pmi/train.parquet").exists():
        pmi_stage.main()
    stage.main()
    return {s: (root / f"data/congeneric/{s}.parquet").read_bytes() for s in SPLITS}


def test_stage_outputs_k_rows_per_example_deterministically(tmp_path, monkeypatch):
    write_prepared(tmp_path)
    first = _run(tmp_path, monkeypatch)
    n_train = read_parquet(tmp_path / "data/prepared/train.parquet").num_rows
    for split in SPLITS:
        out = read_parquet(tmp_path / f"data/congeneric/{split}.parquet")
        ids = read_parquet(tmp_path / f"data/prepared/{split}.parquet").column("example_id").to_pylist()
        assert out.schema.equals(CONGENERIC)
        assert out.column("example_id").to_pylist() == ids
        for i, row in enumerate(out.to_pylist()):
            assert len(row["congeneric_rows"]) == 5
            assert all(0 <= r < n_train for r in row["congeneric_rows"])
            assert row["congeneric_scores"] == sorted(row["congeneric_scores"], reverse=True)
            if split == "train":
                assert i not in row["congeneric_rows"]
    assert _run(tmp_path, monkeypatch) == first  # byte-identical


def test_stage_rejects_pmi_output_that_does_not_line_up(tmp_path, monkeypatch):
    write_prepared(tmp_path)
    _run(tmp_path, monkeypatch)
    path = tmp_path / "data/pmi/valid.parquet"
    write_parquet(read_parquet(path).slice(1), path)
    with pytest.raises(InputError, match="valid.parquet: example ids do not match"):
        _run(tmp_path, monkeypatch)
