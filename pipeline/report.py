"""reports/results.md: this project's metrics beside the papers' tables, and a case study.

Layouts follow the papers: PEDNet's Table 2 (fractions, 3 decimals) and GCL's Table 2(a)
(percent, about 4 significant digits; entropies in bits), then a case study like
PEDNet's Table 4 (persona, context, every model's response and the persona it chose).
Models whose metrics or generations are missing are shown as "not run".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline import paper_results as paper
from pipeline.io import InputError, read_parquet
from pipeline.metrics import METRIC_KEYS
from pipeline.schema import SILENCE

NOT_RUN = "not run"
DISPLAY = {
    "seq2seq": "Seq2Seq",
    "gpmn": "GPMN",
    "postks": "PostKS",
    "pednet": "PEDNet",
    "seq2seq_gcl": "Seq2Seq + GCL",
    "pednet_gcl": "PEDNet + GCL",
    "transformer": "Transformer",
    "transformer_gcl": "Transformer + GCL",
}
PEDNET_COLUMNS = [
    ("Distinct-1", "distinct_1"), ("Distinct-2", "distinct_2"), ("P-R", "persona_recall"),
    ("P-P", "persona_precision"), ("P-F1", "persona_f1"), ("P-Cover", "persona_coverage"),
]  # fmt: skip
GCL_COLUMNS = [
    ("BLEU-1", "bleu_1"), ("BLEU-2", "bleu_2"), ("BLEU-3", "bleu_3"), ("BLEU-4", "bleu_4"),
    ("Dist-1", "distinct_1"), ("Dist-2", "distinct_2"), ("Dist-3", "distinct_3"),
    ("Avg", "emb_average"), ("Ext", "emb_extrema"), ("Gre", "emb_greedy"), ("Coh", "coherence"),
    ("Ent-1", "entropy_1"), ("Ent-2", "entropy_2"),
]  # fmt: skip


def display(model: str) -> str:
    return DISPLAY.get(model, model)


# ---------------------------------------------------------------- inputs


def load_metrics(path: str | os.PathLike) -> dict | None:
    """A reports/metrics/<model>.json, or None when the model has not been evaluated."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"not JSON ({e.msg})", e.lineno) from None
    missing = [k for k in METRIC_KEYS if k not in values]
    if missing:
        raise InputError(path, f"missing metric(s) {', '.join(missing)} (rerun `dvc repro evaluate`)")
    return values


GENERATION_COLUMNS = ["example_id", "persona", "context", "reference", "hypothesis", "selected_persona"]


def load_generations(path: str | os.PathLike) -> dict[str, dict] | None:
    """example_id -> row of a reports/generations/<model>.parquet, or None when missing."""
    if not Path(path).exists():
        return None
    table = read_parquet(path)
    missing = [c for c in GENERATION_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (schema GENERATIONS)")
    rows = table.select(GENERATION_COLUMNS).to_pylist()
    return {r["example_id"]: r for r in rows}


# ---------------------------------------------------------------- formatting


def fmt_fraction(value: float) -> str:
    """PEDNet's style: 0.037."""
    return f"{value:.3f}"


def fmt_percent_like_gcl(value: float) -> str:
    """GCL's style: about four significant digits, at most three decimals (12.04, 3.995, 0.882)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    decimals = min(3, max(0, 3 - math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _row_order(paper_models: Sequence[str], models: Sequence[str]) -> list[str]:
    return list(paper_models) + [m for m in models if m not in paper_models]


def comparison_table(
    columns: Sequence[tuple[str, str]],
    paper_table: dict[str, dict[str, str]],
    ours: dict[str, dict | None],
    models: Sequence[str],
    ours_format,
) -> str:
    """One row per (model, source): the paper's printed value, then ours in the paper's unit."""
    rows = []
    for model in _row_order(list(paper_table), models):
        if model in paper_table:
            rows.append([display(model), "*paper*"] + [paper_table[model][key] for _, key in columns])
        if model in models:
            values = ours.get(model)
            if values:
                cells = [ours_format(key, values[key]) for _, key in columns]
            else:
                cells = [NOT_RUN] + [""] * (len(columns) - 1)
            rows.append([display(model), "**ours**"] + cells)
    return markdown_table(["Model", "Source"] + [name for name, _ in columns], rows)


def _pednet_format(key: str, value: float) -> str:
    return fmt_fraction(value)


def _gcl_format(key: str, value: float) -> str:
    return fmt_percent_like_gcl(value if key in paper.BITS else 100 * value)


# ---------------------------------------------------------------- case study


def pick_cases(
    generations: dict[str, dict[str, dict] | None], n: int, case_ids: Sequence[str] = ()
) -> list[str]:
    """example_ids for the case study: ``case_ids`` if given, else the ``n`` examples with the
    smallest sha256 of their id among those every present model answered (a fixed pick that
    does not depend on file order or on the responses), skipping opening turns."""
    present = [g for g in generations.values() if g is not None]
    if not present:
        return []
    common = set(present[0])
    for g in present[1:]:
        common &= set(g)
    if case_ids:
        unknown = [c for c in case_ids if c not in common]
        if unknown:
            raise InputError("params.yaml", f"report.case_ids not in every model's generations: {unknown}")
        return list(case_ids)
    candidates = sorted(
        (hashlib.sha256(e.encode()).hexdigest(), e) for e in common if present[0][e]["context"] != SILENCE
    )
    return [e for _, e in candidates[:n]]


def case_study(example_id: str, generations: dict[str, dict[str, dict] | None], models: Sequence[str]) -> str:
    first = next(g for g in generations.values() if g is not None)[example_id]
    persona = first["persona"]
    lines = [f"**{example_id}**", "", "Persona:", ""]
    lines += [f"{i + 1}. {escape(p)}" for i, p in enumerate(persona)]
    context = "(the bot opens the dialogue)" if first["context"] == SILENCE else escape(first["context"])
    lines += ["", f"Context: {context}", "", f"Reference: {escape(first['reference'])}", ""]
    rows = []
    for model in models:
        g = generations.get(model)
        if g is None:
            rows.append([display(model), NOT_RUN, ""])
            continue
        row = g[example_id]
        sel = row["selected_persona"]
        if sel is None:
            chosen = "—"
        elif 0 <= sel < len(persona):
            chosen = f"{sel + 1}. {escape(persona[sel])}"
        else:
            chosen = f"index {sel} (out of range)"
        rows.append([display(model), escape(row["hypothesis"]) or "(empty)", chosen])
    lines.append(markdown_table(["Model", "Response", "Selected persona"], rows))
    return "\n".join(lines)


# ---------------------------------------------------------------- the document


def describe_source(source: str) -> str:
    if source == "parlai":
        return "the full Persona-Chat (ParlAI's archive)"
    return f"the ParlAI-format files at `{source}`"


def _ours_data(ours: dict[str, dict | None], source: str) -> str:
    counts = sorted({v["n_examples"] for v in ours.values() if v and "n_examples" in v})
    n = ", ".join(f"{c:,}" for c in counts) if counts else "no"
    return f"**Ours**: the test split of {describe_source(source)}, as prepared by this pipeline ({n} test examples)."


def render(
    ours: dict[str, dict | None],
    generations: dict[str, dict[str, dict] | None],
    models: Sequence[str],
    source: str,
    case_studies: int = 3,
    case_ids: Sequence[str] = (),
) -> str:
    run = [m for m in models if ours.get(m) is not None]
    not_run = [m for m in models if ours.get(m) is None]
    parts = [
        "# Results",
        "",
        "Generated by `dvc repro report` (stages/report.py) from reports/metrics/*.json and "
        "reports/generations/*.parquet; do not edit by hand. Rows marked *paper* are the papers' "
        "published numbers (pipeline/paper_results.py), measured on different data (see below each table).",
        "",
        f"Evaluated: {', '.join(display(m) for m in run) or 'none yet'}."
        + (f" Not run yet: {', '.join(display(m) for m in not_run)}." if not_run else ""),
        "",
        "## PEDNet Table 2: diversity and persona use",
        "",
        comparison_table(PEDNET_COLUMNS, paper.PEDNET_TABLE2, ours, models, _pednet_format),
        "",
        f"**Paper**: {paper.PEDNET_SOURCE}; PEDNet at K = 15. {_ours_data(ours, source)} "
        "Fractions, as the paper prints them.",
        "",
        "## GCL Table 2(a): relevance, diversity and informativeness",
        "",
        comparison_table(GCL_COLUMNS, paper.GCL_TABLE2A, ours, models, _gcl_format),
        "",
        f"**Paper**: {paper.GCL_SOURCE}. {_ours_data(ours, source)} "
        "Percent, as the paper prints them; Ent-1/2 in bits. Our embedding metrics use this "
        "project's word vectors (data/embeddings), and Coherence is measured against the query "
        "(the last context utterance), so they are comparable across our rows, not with the paper's.",
        "",
        "## Case study (like PEDNet Table 4)",
        "",
    ]
    cases = pick_cases(generations, case_studies, case_ids)
    if not cases:
        parts.append("No generations yet.")
    for i, example_id in enumerate(cases):
        if i:
            parts.append("")
        parts.append(case_study(example_id, generations, models))
    return "\n".join(parts) + "\n"
