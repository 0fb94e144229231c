"""Calibrate the PMI specific words against the PEDNet authors' released ones.

    python -m pipeline.preprocessing.pmi_calibration --authors PATH/TO/PEDNet/data   # -> reports/pmi_calibration.json

The authors' repository (github.com/zwycodes/PEDNet) ships ``demo.dev2`` and
``demo.test2``: Persona-Chat valid and test turns, one per line, ``query \\t response \\t
persona sentences joined by ** \\t label \\t positions`` where ``positions`` are the query
tokens they mark as specific words (a lone ``0``: none). Our valid and test splits are
turns of Persona-Chat valid, so most of them can be matched by (query, response).

For every combination of the options the paper leaves open (which statistics, the log
base, ``min_count``, the word cap) this scores our matched turns with ``pipeline.preprocessing.pmi`` and
reports the coverage (share of turns with >= 1 specific word, words per turn) beside the
authors' on the same turns, and the word-level precision / recall / F1 of ours against
theirs. The files are not part of this project (nothing is downloaded): point ``--authors``
at a clone.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

from pipeline.io import InputError, read_parquet, run_stage, write_json
from pipeline.preprocessing import pmi
from pipeline.preprocessing.text import stop_words

log = logging.getLogger(__name__)

PREPARED = "data/prepared"
REPORT = "reports/pmi_calibration.json"
FILES = ("demo.dev2", "demo.test2")
OPTIONS = {
    "statistics": ("leave_persona_out", "transductive"),
    "log_base": ("e", 2, 10),
    "min_count": (1, 3),
    "max_words": (4, 5),
}


def author_lines(path: Path):
    """(line number, [query, response, candidates, label, positions]) of an authors' file."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 5:
            raise InputError(path, f"line {n}: expected 5 tab-separated fields, got {len(fields)}")
        yield n, fields


def read_authors(path: Path) -> dict[tuple[str, str], set[str]]:
    """(query, response) -> the set of words the authors mark as specific."""
    out: dict[tuple[str, str], set[str]] = {}
    for n, (query, response, _, _, positions) in author_lines(path):
        tokens = query.split()
        try:
            idx = [int(i) for i in positions.split()]
        except ValueError:
            raise InputError(path, f"line {n}: positions {positions!r} are not integers") from None
        if idx == [0]:  # the authors' "no specific word"
            idx = []
        out[(query, response)] = {tokens[i] for i in idx if i < len(tokens)}
    return out


def agreement(ours: list[list[str]], theirs: list[set[str]]) -> dict:
    tp = sum(len(set(o) & t) for o, t in zip(ours, theirs, strict=True))
    n_ours, n_theirs = sum(len(set(o)) for o in ours), sum(len(t) for t in theirs)
    p, r = tp / max(n_ours, 1), tp / max(n_theirs, 1)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-12), 4)}


def coverage(words) -> dict:
    n = len(words)
    return {"with_any": round(sum(1 for w in words if w) / max(n, 1), 4),
            "per_turn": round(sum(len(set(w)) for w in words) / max(n, 1), 3)}


def calibrate(authors_dir: Path, prepared: Path = Path(PREPARED)) -> dict:
    authors: dict[tuple[str, str], set[str]] = {}
    for name in FILES:
        path = authors_dir / name
        if not path.exists():
            raise InputError(path, "missing (the PEDNet authors' data folder holds demo.dev2 and demo.test2)")
        authors.update(read_authors(path))
    cols = ["example_id", "dialogue_id", "query", "response", "persona"]
    rows = {s: read_parquet(prepared / f"{s}.parquet", columns=cols).to_pydict() for s in ("train", "valid", "test")}
    evald = {k: rows["valid"][k] + rows["test"][k] for k in cols}
    matched = [i for i, key in enumerate(zip(evald["query"], evald["response"], strict=True)) if key in authors]
    if not matched:
        raise InputError(authors_dir, "no valid/test turn of data/prepared matches the authors' (query, response)")
    q = [evald["query"][i] for i in matched]
    per = [evald["persona"][i] for i in matched]
    theirs = [authors[(evald["query"][i], evald["response"][i])] for i in matched]
    log.info("%d of %d valid/test turns matched the authors' files", len(matched), len(evald["query"]))
    sw = stop_words()
    their_words = [w for t in theirs for w in t]
    report = {
        "matched_turns": len(matched),
        "eval_turns": len(evald["query"]),
        "authors": {**coverage([sorted(t) for t in theirs]), "max": max(map(len, theirs)),
                    "share_in_our_stop_list": round(sum(w in sw for w in their_words) / max(len(their_words), 1), 4)},
        "options": [],
    }
    fitted = {}
    for statistics, base, min_count, cap in itertools.product(*OPTIONS.values()):
        if statistics not in fitted:
            if statistics == "transductive":
                fitted[statistics] = pmi.fit(rows["train"]["query"] + evald["query"],
                                             rows["train"]["persona"] + evald["persona"])
            else:  # train-only statistics: valid/test are scored from all of train
                fitted[statistics] = pmi.fit(rows["train"]["query"], rows["train"]["persona"])
        words, _ = pmi.specific_words(fitted[statistics], q, per, 3.5, cap, min_count, None, pmi.LOG_BASES[base])
        report["options"].append({"statistics": statistics if statistics == "transductive" else "train",
                                  "log_base": base, "min_count": min_count, "max_words": cap,
                                  **coverage(words), **agreement(words, theirs)})
        log.info("%s", report["options"][-1])
    best = max(report["options"], key=lambda o: o["f1"])
    report["best_f1"] = best
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", type=Path, required=True, help="the PEDNet authors' data folder")
    parser.add_argument("--out", default=REPORT)
    args = parser.parse_args(argv)
    write_json(calibrate(args.authors), args.out)


if __name__ == "__main__":
    run_stage(main)
