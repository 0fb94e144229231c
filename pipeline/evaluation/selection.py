"""Who selects the optimal persona, and how well the labels themselves hold up (PEDNet).

    python -m pipeline.evaluation.selection [--authors PATH/TO/PEDNet/data] [--models pednet pednet_prior ...]

Writes reports/persona_selection.json and .md:

- **Selectors** on the test split, each scored the same way against the optimal-persona
  labels of the ``persona_labels`` stage: ``accuracy_labelled`` over turns whose label is
  a persona sentence (choosing no persona there is wrong), and ``accuracy_all`` over every
  turn with None as one more class (the authors' code's reading, where the decoder may
  pick the None slot). Selectors: chance (1/M over the labelled turns), two non-learned
  retrievals that see only the query, as a model does (MiniLM cosine between the query
  and each persona sentence, and content-word overlap), and each trained model's
  ``selected_persona`` in reports/generations/<model>/seed<K>.parquet, per seed and as
  mean ± sd. With data/persona_prior (``python -m stages.persona_prior``), also the bilinear
  selector fitted on the MiniLM vectors, alone (PEDNet's ``selection_prior: bilinear``).
- **Labellers**: our labels against two independent ones on the same turns: a word-overlap
  labeller (the persona sentence sharing the most content words with the gold response;
  None when none is shared) and, given ``--authors``, the PEDNet authors' own labels
  in their released demo.dev2 / demo.test2 (Persona-Chat valid and test, BERT labels,
  matched to our valid/test turns by (query, response)). Agreement counts None as a
  class; ``agreement_where_both_labelled`` only turns both give a sentence. The None
  threshold's calibration is in reports/persona_labels.json (train None share vs the
  paper's 34.5%).

An analysis tool over the stage outputs (not a DVC stage: it reads whichever models were
trained). The MiniLM retrieval reads the cosines the ``persona_labels`` stage wrote
(column query_similarities: its encoder and layer), the same numbers PEDNet's optional
selection prior sees.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline.evaluation.stats import summarize
from pipeline.io import InputError, atomic_path, load_params, read_parquet, run_stage, write_json
from pipeline.preprocessing import persona_labels as pl
from pipeline.preprocessing.pmi_calibration import author_lines
from pipeline.preprocessing.text import content_words

log = logging.getLogger(__name__)

REPORT = "reports/persona_selection.json"
AUTHOR_FILES = ("demo.dev2", "demo.test2")  # Persona-Chat valid and test; our valid and test are both from valid


def accuracy(chosen: list[int | None], labels: list[int | None]) -> dict:
    """The one way every selector is scored: over labelled turns, and over all with None a class."""
    labelled = [(c, y) for c, y in zip(chosen, labels, strict=True) if y is not None]
    return {
        "accuracy_labelled": round(sum(c == y for c, y in labelled) / max(len(labelled), 1), 4),
        "accuracy_all": round(sum(c == y for c, y in zip(chosen, labels, strict=True)) / max(len(labels), 1), 4),
        "none_chosen": round(sum(c is None for c in chosen) / max(len(chosen), 1), 4),
        "labelled_turns": len(labelled),
    }


def chance(personas: list[list[str]], labels: list[int | None]) -> float:
    """Expected accuracy of a uniform pick among the sentences, over labelled turns."""
    probs = [1 / len(p) for p, y in zip(personas, labels, strict=True) if y is not None and p]
    return round(float(np.mean(probs)) if probs else 0.0, 4)


def overlap_choice(text: str, persona: list[str]) -> int | None:
    """The persona sentence sharing the most content words with ``text`` (first on ties);
    None when no sentence shares one."""
    words = content_words(text)
    shared = [len(words & content_words(p)) for p in persona]
    if not shared or max(shared) == 0:
        return None
    return int(np.argmax(shared))


def retrieval_choices(query_sims: list) -> list[int | None]:
    """argmax_i cos(X, p_i) (first on ties), from the persona_labels stage's
    query_similarities; never None (a retrieval baseline), except without a persona."""
    return [pl.choose(np.asarray(q, dtype=np.float32), -2.0) if q else None for q in query_sims]


def agreement(a: list[int | None], b: list[int | None]) -> dict:
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return {
        "turns": len(a),
        "agreement": round(sum(x == y for x, y in zip(a, b, strict=True)) / max(len(a), 1), 4),
        "agreement_where_both_labelled": round(sum(x == y for x, y in both) / max(len(both), 1), 4),
        "both_labelled": len(both),
        "none_share": [round(sum(x is None for x in a) / max(len(a), 1), 4),
                       round(sum(y is None for y in b) / max(len(b), 1), 4)],
    }


def read_author_labels(path: Path) -> dict[tuple[str, str], str | None]:
    """(query, response) -> the authors' optimal persona sentence (None: their None slot)."""
    out: dict[tuple[str, str], str | None] = {}
    for n, (query, response, candidates, label, _) in author_lines(path):
        slots = candidates.split("**")
        try:
            i = int(label)
        except ValueError:
            raise InputError(path, f"line {n}: label {label!r} is not an integer") from None
        if not 0 <= i < len(slots):
            raise InputError(path, f"line {n}: label {i} outside its {len(slots)} candidates")
        out[(query, response)] = None if i == 0 else slots[i]
    return out


def load_labels(split: str, data: Path) -> tuple[dict, list[int | None]]:
    rows = read_parquet(data / "prepared" / f"{split}.parquet",
                        columns=["example_id", "query", "response", "persona"]).to_pydict()
    path = data / "persona_labels" / f"{split}.parquet"
    labels = read_parquet(path, columns=["example_id", "optimal_persona", "query_similarities"]).to_pydict()
    if labels["example_id"] != rows["example_id"]:
        raise InputError(path, f"rows differ from data/prepared/{split}.parquet")
    rows["query_similarities"] = labels["query_similarities"]
    return rows, labels["optimal_persona"]


def model_selections(model: str, seeds: list[int], rows: dict, labels: list[int | None]) -> dict | None:
    per_seed = {}
    for k in seeds:
        path = Path("reports/generations") / model / f"seed{k}.parquet"
        if not path.exists():
            continue
        gen = read_parquet(path, columns=["example_id", "selected_persona"]).to_pydict()
        chosen = dict(zip(gen["example_id"], gen["selected_persona"], strict=True))
        if set(chosen) != set(rows["example_id"]):
            raise InputError(path, "its example ids differ from the test split's")
        per_seed[f"seed{k}"] = accuracy([chosen[e] for e in rows["example_id"]], labels)
    if not per_seed or all(s["none_chosen"] == 1.0 for s in per_seed.values()):
        return None  # no seeds, or a model that selects nothing (Seq2Seq)
    summary = {key: summarize([s[key] for s in per_seed.values()])
               for key in ("accuracy_labelled", "accuracy_all", "none_chosen")}
    return {"seeds": per_seed, "summary": summary}


def analyse(models: list[str], authors: Path | None, data: Path = Path("data")) -> dict:
    params = load_params()
    rows, labels = load_labels("test", data)
    selectors = {
        "chance": {"accuracy_labelled": chance(rows["persona"], labels)},
        "retrieval_minilm_query": accuracy(retrieval_choices(rows["query_similarities"]), labels),
        "retrieval_overlap_query": accuracy([overlap_choice(q, p) for q, p in zip(rows["query"], rows["persona"],
                                                                                strict=True)], labels),
    }
    prior = data / "persona_prior" / "test.parquet"
    if prior.exists():  # the fitted bilinear selector alone (stages.persona_prior), where it was written
        table = read_parquet(prior, columns=["example_id", "bilinear_logits"]).to_pydict()
        if table["example_id"] != rows["example_id"]:
            raise InputError(prior, "its example ids differ from the test split's (rerun python -m stages.persona_prior)")
        selectors["bilinear_minilm_query"] = accuracy([int(np.argmax(x)) if x else None
                                                      for x in table["bilinear_logits"]], labels)
    for model in models:
        if (found := model_selections(model, params["seeds"], rows, labels)) is not None:
            selectors[model] = found
    out = {"split": "test", "turns": len(labels), "selectors": selectors, "labellers": {}}
    theirs: dict = {}
    for name in AUTHOR_FILES if authors is not None else ():
        path = authors / name
        if not path.exists():
            raise InputError(path, "missing (the PEDNet authors' data folder holds demo.dev2 and demo.test2)")
        theirs.update(read_author_labels(path))
    for split in ("valid", "test"):
        r, ours = (rows, labels) if split == "test" else load_labels(split, data)
        overlap = [overlap_choice(y, p) for y, p in zip(r["response"], r["persona"], strict=True)]
        out["labellers"].setdefault("word_overlap", {})[split] = agreement(ours, overlap)
        if theirs:
            a, b = [], []
            for i, key in enumerate(zip(r["query"], r["response"], strict=True)):
                if key not in theirs:
                    continue
                sentence = theirs[key]
                if sentence is not None and sentence not in r["persona"][i]:
                    continue  # their sentence not among ours (different text): cannot compare
                a.append(ours[i])
                b.append(None if sentence is None else r["persona"][i].index(sentence))
            out["labellers"].setdefault("authors", {})[split] = agreement(a, b)
    for name, block in out["selectors"].items():
        log.info("%s: %s", name, block.get("summary", block))
    for name, block in out["labellers"].items():
        log.info("labels vs %s: %s", name, block)
    return out


def render(report: dict) -> str:
    """reports/persona_selection.md: the selectors and the labellers as tables."""
    def cell(block: dict, key: str) -> str:
        if "summary" in block:
            v = block["summary"][key]
            return f"{100 * v['mean']:.1f} ± {100 * (v['sd'] or 0):.1f} ({v['n_seeds']} seeds)"
        return f"{100 * block[key]:.1f}" if key in block else "—"

    lines = ["# Persona selection on the test split", "",
             "Every selector scored one way against the optimal-persona labels (`persona_labels`): "
             "**labelled**: accuracy over turns whose label is a persona sentence (choosing none there is "
             "wrong); **all**: over every turn, None a class (the authors' code's reading). Percent. "
             "Written by `python -m pipeline.evaluation.selection`.", "",
             "| Selector | Accuracy, labelled turns | Accuracy, all turns | None chosen |", "|---|---|---|---|"]
    for name, block in report["selectors"].items():
        lines.append(f"| {name} | {cell(block, 'accuracy_labelled')} | {cell(block, 'accuracy_all')} | "
                     f"{cell(block, 'none_chosen')} |")
    lines += ["", "## Our labels against independent labellers", "",
              "| Labeller | Split | Turns | Agreement (None a class) | Where both give a sentence | "
              "None share (ours / theirs) |", "|---|---|---|---|---|---|"]
    for name, splits in report["labellers"].items():
        for split, a in splits.items():
            lines.append(f"| {name} | {split} | {a['turns']} | {100 * a['agreement']:.1f} | "
                         f"{100 * a['agreement_where_both_labelled']:.1f} | "
                         f"{100 * a['none_share'][0]:.1f} / {100 * a['none_share'][1]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", type=Path, default=None, help="the PEDNet authors' data folder (optional)")
    parser.add_argument("--models", nargs="*",
                        default=["pednet", "pednet_prior", "pednet_prior_bilinear", "postks", "gpmn"])
    parser.add_argument("--out", default=REPORT)
    args = parser.parse_args(argv)
    report = analyse(args.models, args.authors)
    write_json(report, args.out)
    with atomic_path(Path(args.out).with_suffix(".md")) as tmp:
        tmp.write_text(render(report), encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
