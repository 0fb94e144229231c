"""Human evaluation kit: blind annotation sheets and their scores (PEDNet's human study).

Annotators rate each response for **Relevance** and **Persona Expression** on 0–2.

    python -m pipeline.evaluation.human_eval export --examples 100 --seed 0 \\
        --sheet reports/human_eval/sheet.csv --key reports/human_eval/key.csv
    python -m pipeline.evaluation.human_eval score --key reports/human_eval/key.csv \\
        filled/alice.csv filled/bob.csv filled/carol.csv [--out reports/human_eval/scores.json]

``export`` samples test examples that every model answered (seeded), writes one row per
(example, model) in a seeded shuffle, without the model: the sheet is blind. The key file
maps each item to its model and example and stays with the organiser. ``score`` reads
filled copies of the sheet (one per annotator), checks them against the key, and reports
per-model means and Fleiss' κ over all items for each criterion.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.io import InputError, atomic_path, read_parquet, run_stage, write_json
from pipeline.schema import GCL_MODELS, MODELS, SILENCE

log = logging.getLogger(__name__)

CRITERIA = ("relevance", "persona_expression")
SCORES = (0, 1, 2)
SHEET_COLUMNS = ("item", "persona", "context", "response") + CRITERIA
KEY_COLUMNS = ("item", "model", "example_id")
PERSONA_SEPARATOR = " | "


# ---------------------------------------------------------------- export


def build_sheet(
    generations: dict[str, list[dict]], n_examples: int, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(sheet rows, key rows). ``generations``: model -> rows of its generations file.

    The same ``n_examples`` test examples for every model (opening turns skipped: there is
    no context to judge relevance against), drawn and shuffled with ``random.Random(seed)``
    from sorted ids, so the same inputs give the same sheet.
    """
    if not generations:
        raise ValueError("no models to export")
    by_model = {m: {r["example_id"]: r for r in rows} for m, rows in generations.items()}
    models = sorted(by_model)
    common = set.intersection(*(set(rows) for rows in by_model.values()))
    first = by_model[models[0]]
    eligible = sorted(e for e in common if first[e]["context"] != SILENCE)
    if n_examples < 1 or n_examples > len(eligible):
        raise ValueError(f"asked for {n_examples} examples, {len(eligible)} are answered by every model")
    rng = random.Random(seed)
    chosen = rng.sample(eligible, n_examples)
    pairs = [(e, m) for e in chosen for m in models]
    rng.shuffle(pairs)
    width = len(str(len(pairs)))
    sheet, key = [], []
    for i, (example_id, model) in enumerate(pairs, start=1):
        row = by_model[model][example_id]
        item = f"{i:0{width}d}"
        sheet.append(
            {
                "item": item,
                "persona": PERSONA_SEPARATOR.join(row["persona"]),
                "context": row["context"],
                "response": row["hypothesis"],
                **{c: "" for c in CRITERIA},
            }
        )
        key.append({"item": item, "model": model, "example_id": example_id})
    return sheet, key


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    log.info("wrote %s (%d rows)", path, len(rows))
    return Path(path)


def read_generations(path: str | os.PathLike) -> list[dict]:
    cols = ["example_id", "persona", "context", "hypothesis"]
    return read_parquet(path, columns=cols).to_pylist()  # a missing column: one InputError naming it


# ---------------------------------------------------------------- reading filled sheets


def _read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs; InputError if the file or a required column is missing."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # -sig: spreadsheets add a BOM
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(missing)}", 1)
        rows = []
        for row in reader:
            if None in row:
                raise InputError(path, "more cells than header columns", reader.line_num)
            rows.append((reader.line_num, row))
    return rows


def read_key(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """item -> (model, example_id)."""
    key: dict[str, tuple[str, str]] = {}
    for line, row in _read_csv(path, KEY_COLUMNS):
        item = row["item"].strip()
        if item in key:
            raise InputError(path, f"item {item!r} appears twice", line)
        key[item] = (row["model"].strip(), row["example_id"].strip())
    if not key:
        raise InputError(path, "empty key")
    return key


def read_sheet(path: str | os.PathLike, items: Sequence[str]) -> dict[str, dict[str, int]]:
    """item -> {criterion: score} of one annotator's filled sheet, checked against the key's items."""
    expected = set(items)
    scores: dict[str, dict[str, int]] = {}
    for line, row in _read_csv(path, ("item",) + CRITERIA):
        item = row["item"].strip()
        if item not in expected:
            raise InputError(path, f"item {item!r} is not in the key (a sheet from another export?)", line)
        if item in scores:
            raise InputError(path, f"item {item!r} appears twice", line)
        values = {}
        for c in CRITERIA:
            raw = (row[c] or "").strip()
            try:
                value = float(raw)
                if value != int(value):
                    raise ValueError
                value = int(value)
            except ValueError:
                raise InputError(path, f"{c} must be one of {SCORES}, got {raw!r}", line) from None
            if value not in SCORES:
                raise InputError(path, f"{c} must be one of {SCORES}, got {raw!r}", line)
            values[c] = value
        scores[item] = values
    missing = sorted(expected - set(scores))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(path, f"{len(missing)} item(s) of the key not rated: {', '.join(missing[:5])}{more}")
    return scores


# ---------------------------------------------------------------- agreement and means


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' κ of an items × categories matrix of rater counts (same raters per item).

    p_j = Σ_i n_ij / (N n); P_i = (Σ_j n_ij² − n) / (n (n − 1)); κ = (P̄ − P̄e) / (1 − P̄e)
    with P̄ = mean P_i and P̄e = Σ_j p_j². NaN when P̄e = 1 (every rating in one category:
    agreement is total, chance agreement too, and κ is undefined).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError("need an items x categories matrix")
    n = counts.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError("every item needs the same number (>= 2) of ratings")
    n = n[0]
    p_j = counts.sum(axis=0) / counts.sum()
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), (p_j**2).sum()
    if math.isclose(p_e, 1.0):
        return float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def score(key: dict[str, tuple[str, str]], sheets: Sequence[dict[str, dict[str, int]]]) -> dict:
    """Per-model mean of each criterion over items and annotators; Fleiss' κ per criterion."""
    if not sheets:
        raise ValueError("no filled sheets")
    items = sorted(key)
    models = sorted({m for m, _ in key.values()})
    out: dict = {"annotators": len(sheets), "items": len(items), "models": {}, "fleiss_kappa": {}}
    for model in models:
        mine = [i for i in items if key[i][0] == model]
        out["models"][model] = {"n_items": len(mine)} | {
            c: math.fsum(s[i][c] for s in sheets for i in mine) / (len(mine) * len(sheets)) for c in CRITERIA
        }
    for c in CRITERIA:
        if len(sheets) < 2:
            out["fleiss_kappa"][c] = None  # agreement needs two annotators
            continue
        counts = np.zeros((len(items), len(SCORES)))
        for row, i in enumerate(items):
            for s in sheets:
                counts[row, SCORES.index(s[i][c])] += 1
        kappa = fleiss_kappa(counts)
        out["fleiss_kappa"][c] = None if math.isnan(kappa) else kappa
    return out


def format_scores(result: dict) -> str:
    lines = [
        f"{result['annotators']} annotator(s), {result['items']} items",
        "",
        "| Model | Items | Relevance | Persona Expression |",
        "|---|---|---|---|",
    ]
    for model, v in result["models"].items():
        lines.append(f"| {model} | {v['n_items']} | {v['relevance']:.3f} | {v['persona_expression']:.3f} |")
    kappas = ", ".join(
        f"{c}: {'n/a' if k is None else f'{k:.3f}'}" for c, k in result["fleiss_kappa"].items()
    )
    lines += ["", f"Fleiss' kappa: {kappas}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def _export(args: argparse.Namespace) -> None:
    directory = Path(args.generations_dir)
    stem = f"seed{args.training_seed}.parquet"  # which training seed's generations are rated
    models = args.models or [m for m in MODELS + GCL_MODELS if (directory / m / stem).exists()]
    if not models:
        raise InputError(directory, f"no generations found (*/{stem}; run the generators first)")
    generations = {m: read_generations(directory / m / stem) for m in models}
    try:
        sheet, key = build_sheet(generations, args.examples, args.seed)
    except ValueError as e:
        raise InputError(directory, str(e)) from None
    write_csv(sheet, SHEET_COLUMNS, args.sheet)
    write_csv(key, KEY_COLUMNS, args.key)
    print(
        f"{len(sheet)} items ({args.examples} examples x {len(models)} models: {', '.join(sorted(models))})"
    )
    print(f"give {args.sheet} to each annotator; keep {args.key} to yourself")


def _score(args: argparse.Namespace) -> None:
    key = read_key(args.key)
    sheets = [read_sheet(path, list(key)) for path in args.sheets]
    result = score(key, sheets)
    if args.out:
        write_json(result, args.out)
    print(format_scores(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.human_eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a blind, shuffled annotation sheet and its key")
    ex.add_argument("--generations-dir", default="reports/generations")
    ex.add_argument("--training-seed", type=int, default=1, help="rate <dir>/<model>/seed<K>.parquet")
    ex.add_argument("--models", nargs="+", help="default: every model with a generations file")
    ex.add_argument("--examples", type=int, default=100, help="test examples (each rated for every model)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--sheet", default="reports/human_eval/sheet.csv")
    ex.add_argument("--key", default="reports/human_eval/key.csv")
    ex.set_defaults(run=_export)
    sc = sub.add_parser("score", help="per-model means and Fleiss' kappa from filled sheets")
    sc.add_argument("sheets", nargs="+", help="filled copies of the sheet, one per annotator")
    sc.add_argument("--key", default="reports/human_eval/key.csv")
    sc.add_argument("--out", help="also write the scores as JSON here")
    sc.set_defaults(run=_score)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
