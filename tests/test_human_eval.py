"""Human evaluation kit: blind export, scoring of filled sheets, Fleiss' kappa."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.evaluation import human_eval as he
from pipeline.io import InputError, write_parquet
from pipeline.schema import GENERATIONS_LEGACY, SILENCE

MODELS = ("seq2seq", "pednet", "gpmn")
# a model's "quality" decides the scores the fake annotators give it
QUALITY = {"seq2seq": 0, "pednet": 2, "gpmn": 1}


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as worked on Wikipedia ("Fleiss' kappa", worked example): 10 subjects,
    # 14 raters, 5 categories. p_j = 0.143 0.200 0.279 0.150 0.229 -> P_e = 0.213;
    # P_i = 1.000 0.253 0.308 0.440 0.330 0.462 0.242 0.176 0.286 0.286 -> P = 0.378;
    # kappa = (0.378 - 0.213) / (1 - 0.213) = 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert he.fleiss_kappa(np.array(table)) == pytest.approx(0.2099, abs=5e-5)


def test_fleiss_kappa_small_cases():
    # perfect agreement, two categories used: P = 1, P_e = 0.5 -> kappa 1
    assert he.fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)
    # 2 raters always split: P_i = 0, p = (1/2, 1/2), P_e = 1/2 -> kappa = -1
    assert he.fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    assert math.isnan(he.fleiss_kappa([[3, 0], [3, 0]]))  # all in one category: undefined
    with pytest.raises(ValueError, match="same number"):
        he.fleiss_kappa([[2, 0], [1, 0]])


def write_generations(directory: Path, n: int = 12) -> None:
    ids = [f"test-00000-{t:02d}" for t in range(n)]
    for model in MODELS:
        table = pa.Table.from_pydict(
            {
                "example_id": ids,
                "persona": [["i have a dog", "i like jazz"]] * n,
                "context": [SILENCE] + [f"question {t} , right ?" for t in range(1, n)],
                "reference": ["ref"] * n,
                "hypothesis": [f"{model} answer {t}" for t in range(n)],
                "selected_persona": [None] * n,
            },
            schema=GENERATIONS_LEGACY,
        )
        write_parquet(table, directory / model / "seed1.parquet")


def fill(sheet: Path, key: Path, out: Path, noise: int = 0) -> Path:
    """An annotator: scores from the model's quality; ``noise`` shifts the first few items."""
    models = {r["item"]: r["model"] for r in csv.DictReader(key.open())}
    rows = list(csv.DictReader(sheet.open()))
    for i, row in enumerate(rows):
        q = QUALITY[models[row["item"]]]
        row["relevance"] = str(q if i >= noise else (q + 1) % 3)
        row["persona_expression"] = str(q)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture
def exported(tmp_path):
    write_generations(tmp_path / "gens")
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.csv"
    he.main(["export", "--generations-dir", str(tmp_path / "gens"), "--examples", "5", "--seed", "3",
             "--sheet", str(sheet), "--key", str(key)])  # fmt: skip
    return sheet, key


def test_export_is_blind_shuffled_and_seeded(exported, tmp_path):
    sheet, key = exported
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == list(he.SHEET_COLUMNS)  # no model column: blind
    assert len(rows) == 5 * 3
    keys = list(csv.DictReader(key.open()))
    assert [k["item"] for k in keys] == [r["item"] for r in rows]
    # the same 5 examples for every model, never the opening (SILENCE) turn
    by_model = {m: sorted(k["example_id"] for k in keys if k["model"] == m) for m in MODELS}
    assert by_model["seq2seq"] == by_model["pednet"] == by_model["gpmn"]
    assert "test-00000-00" not in by_model["seq2seq"]
    # rows hold the model's own response, and the models are interleaved (shuffled)
    for r, k in zip(rows, keys, strict=True):
        assert r["response"].startswith(k["model"] + " answer ")
        assert r["persona"] == "i have a dog | i like jazz"
        assert r["relevance"] == "" and r["persona_expression"] == ""
    assert [k["model"] for k in keys] != sorted(k["model"] for k in keys)
    # seeded: the same seed gives the same bytes, another seed another order
    again, other = tmp_path / "again.csv", tmp_path / "other.csv"
    he.main(["export", "--generations-dir", str(tmp_path / "gens"), "--examples", "5", "--seed", "3",
             "--sheet", str(again), "--key", str(tmp_path / "k2.csv")])  # fmt: skip
    he.main(["export", "--generations-dir", str(tmp_path / "gens"), "--examples", "5", "--seed", "4",
             "--sheet", str(other), "--key", str(tmp_path / "k3.csv")])  # fmt: skip
    assert again.read_bytes() == sheet.read_bytes()
    assert other.read_bytes() != sheet.read_bytes()


def test_export_errors(tmp_path):
    write_generations(tmp_path / "gens")
    with pytest.raises(InputError, match="asked for 12 examples, 11 are answered"):
        he.main(["export", "--generations-dir", str(tmp_path / "gens"), "--examples", "12",
                 "--sheet", str(tmp_path / "s.csv"), "--key", str(tmp_path / "k.csv")])  # fmt: skip
    with pytest.raises(InputError, match="no generations found"):
        he.main(["export", "--generations-dir", str(tmp_path / "empty")])


def test_round_trip_scores(exported, tmp_path, capsys):
    sheet, key = exported
    a = fill(sheet, key, tmp_path / "a.csv")
    b = fill(sheet, key, tmp_path / "b.csv")
    c = fill(sheet, key, tmp_path / "c.csv", noise=3)
    out = tmp_path / "scores.json"
    he.main(["score", "--key", str(key), str(a), str(b), str(c), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["annotators"] == 3 and result["items"] == 15
    # persona expression: every annotator gives the model's quality
    for model, q in QUALITY.items():
        assert result["models"][model]["persona_expression"] == q
        assert result["models"][model]["n_items"] == 5
    # relevance: c rated the first 3 rows (q + 1) % 3 instead of q; 15 ratings per model
    shifted = [k["model"] for k in list(csv.DictReader(key.open()))[:3]]
    for model, q in QUALITY.items():
        expected = (15 * q + sum((q + 1) % 3 - q for m in shifted if m == model)) / 15
        assert result["models"][model]["relevance"] == pytest.approx(expected)
    # persona expression: 3 annotators agree on every item, categories 0/1/2 in 5 items each:
    # P = 1, P_e = 3 * (1/3)^2 = 1/3 -> kappa 1
    assert result["fleiss_kappa"]["persona_expression"] == pytest.approx(1.0)
    assert result["fleiss_kappa"]["relevance"] < 1.0
    printed = capsys.readouterr().out
    assert "| pednet | 5 |" in printed and "Fleiss' kappa" in printed


def test_one_annotator_has_no_kappa(exported, tmp_path):
    sheet, key = exported
    result = he.score(
        he.read_key(key), [he.read_sheet(fill(sheet, key, tmp_path / "a.csv"), list(he.read_key(key)))]
    )
    assert result["fleiss_kappa"] == {"relevance": None, "persona_expression": None}


def _rewrite(src: Path, dst: Path, edit) -> Path:
    rows = list(csv.DictReader(src.open()))
    header = list(rows[0])
    rows, header = edit(rows, header)
    with dst.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda rows, h: (rows, [c for c in h if c != "relevance"]),
            r"bad.csv:1: missing column\(s\) relevance",
        ),
        (
            lambda rows, h: ([{**rows[0], "relevance": "3"}] + rows[1:], h),
            r"bad.csv:2: relevance must be one of",
        ),
        (
            lambda rows, h: ([{**rows[0], "relevance": ""}] + rows[1:], h),
            r"bad.csv:2: relevance must be one of",
        ),
        (
            lambda rows, h: ([{**rows[0], "persona_expression": "1.5"}] + rows[1:], h),
            "persona_expression must",
        ),
        (lambda rows, h: (rows[:-1], h), r"1 item\(s\) of the key not rated"),
        (lambda rows, h: (rows + [rows[0]], h), "appears twice"),
        (lambda rows, h: ([{**rows[0], "item": "999"}] + rows[1:], h), "not in the key"),
    ],
)
def test_bad_sheets(exported, tmp_path, edit, message):
    sheet, key = exported
    good = fill(sheet, key, tmp_path / "good.csv")
    bad = _rewrite(good, tmp_path / "bad.csv", edit)
    with pytest.raises(InputError, match=message):
        he.main(["score", "--key", str(key), str(good), str(bad)])


def test_missing_sheet_or_key(exported, tmp_path):
    sheet, key = exported
    with pytest.raises(InputError, match="cannot read"):
        he.main(["score", "--key", str(key), str(tmp_path / "nobody.csv")])
    with pytest.raises(InputError, match="cannot read"):
        he.main(["score", "--key", str(tmp_path / "nokey.csv"), str(sheet)])


def test_generations_without_a_column_are_one_input_error(tmp_path):
    import pyarrow as pa

    from pipeline.evaluation.human_eval import read_generations
    from pipeline.io import write_parquet

    path = tmp_path / "seed1.parquet"
    write_parquet(pa.table({"example_id": ["a"], "persona": [["i ski"]], "context": ["hi"]}), path)
    with pytest.raises(InputError, match="seed1.parquet: no column hypothesis"):
        read_generations(path)
