"""reports/results.md: this project's metrics beside the papers' tables, the controls,
the papers' claims tested on our runs, and a case study.

Layouts follow the papers: PEDNet's Table 2 (fractions, 3 decimals), GCL's Table 2(a) and
Table 3 (percent, about 4 significant digits; entropies in bits), then a case study like
PEDNet's Table 4 (persona, context, every model's response and the persona it chose).
Our cells are mean ± sd over training seeds (reports/summary.json, pipeline.evaluation.stats).
Runs whose metrics or generations are missing are shown as "not run".

Also reports/gcl_ablations.md (stages/gcl_ablations.py): GCL's Table 5 ablations and
Figure 3's group sizes on our runs (``render_gcl_ablations``, ``plot_group_sizes``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from pipeline.evaluation import metrics, stats
from pipeline.evaluation import paper_results as paper
from pipeline.evaluation.metrics import METRIC_KEYS
from pipeline.evaluation.stats import NOT_RUN
from pipeline.io import InputError, atomic_path
from pipeline.schema import SILENCE

DISPLAY = {
    "seq2seq": "Seq2Seq",
    "gpmn": "GPMN",
    "postks": "PostKS",
    "pednet": "PEDNet",
    "seq2seq_history": "Seq2Seq (multi-turn)",
    "seq2seq_history_gcl": "Seq2Seq (multi-turn) + GCL",
    "seq2seq_history_gcl_last": "Seq2Seq (multi-turn) + GCL, last step",
    "pednet_gcl": "PEDNet + GCL",
    "pednet_gcl_last": "PEDNet + GCL, last step",
    "hred_history": "HRED (multi-turn)",
    "hred_history_gcl": "HRED (multi-turn) + GCL",
    "transformer_history": "Transformer (multi-turn)",
    "transformer_history_gcl": "Transformer (multi-turn) + GCL",
    "transformer_history_gcl_last": "Transformer (multi-turn) + GCL, last step",
    "hran_history": "HRAN (multi-turn)",
    "hran_history_gcl": "HRAN (multi-turn) + GCL",
    "hran_history_gcl_last": "HRAN (multi-turn) + GCL, last step",
    "hred_history_gcl_last": "HRED (multi-turn) + GCL, last step",
    "seq2seq_history_adversarial_last": "Adversarial (Seq2Seq, multi-turn), last step",
    "seq2seq_history_mmi": "MMI-bidi (Seq2Seq, multi-turn)",
    "seq2seq_history_mmi_antilm": "MMI-antiLM (Seq2Seq, multi-turn)",
    "seq2seq_history_deeprl": "DeepRL (Seq2Seq, multi-turn)",
    "seq2seq_history_cvae": "CVAE (Seq2Seq, multi-turn)",
    "seq2seq_history_dialogwae": "DialogWAE (Seq2Seq, multi-turn)",
    "gold": "Gold (reference)",
    "constant": "Constant reply",
}
# GCL Table 5's rows (params sections seq2seq_history_gcl_<v>; reports/gcl_ablations.md)
GCL_FULL = "seq2seq_history_gcl"
GCL_BASELINE = "seq2seq_history"
GCL_ABLATIONS = (
    (GCL_FULL, "GCL (full)"),
    ("seq2seq_history_gcl_no_group_wise", "(a) w/o group-wise sampling"),
    ("seq2seq_history_gcl_no_positive_groups", "(b) w/o group-wise positive sampling"),
    ("seq2seq_history_gcl_no_negative_groups", "(c) w/o group-wise negative sampling"),
    ("seq2seq_history_gcl_no_response_side", "(d) w/o response-side sampling"),
    ("seq2seq_history_gcl_no_context_side", "(e) w/o context-side sampling"),
    ("seq2seq_history_gcl_no_matching_scores", "(f) w/o matching scores"),
)
# The control every GCL effect must beat: the same fine-tune with the contrastive term off
GCL_CONTROL = ("seq2seq_history_gcl_mle_only", "Control: same fine-tune, MLE alone (no CL)")
# GCL Figure 3's group sizes: k = 3 is the default run; k = 1, 2 read the first k of its groups,
# k = 4, 5 their own wider selection (stages.select_groups --k)
GCL_GROUP_SIZES: tuple[tuple[int, str], ...] = tuple(
    (k, GCL_FULL if k == 3 else f"seq2seq_history_gcl_k{k}") for k in (1, 2, 3, 4, 5))
# The default objective (Eq. 4 + NLL anchor, fine-tuned from the reference) and the
# alternatives it was chosen against (params sections of the same names)
GCL_OBJECTIVES = (
    (GCL_FULL, "Default: Eq. 4 + 1.0 NLL, fine-tuned from the MLE reference"),
    ("seq2seq_history_gcl_eq4", "Eq. 4 alone (no MLE anchor), fine-tuned from the reference"),
    ("seq2seq_history_gcl_scratch", "The authors' recipe: from scratch, 3 MLE epochs, then Eq. 4 + NLL, K = 6 draws"),
)
LAST = "_last"  # the run of a GCL training's final step (stages.generate --checkpoint last)
DISPLAY.update(
    {GCL_CONTROL[0]: "Seq2Seq (multi-turn), MLE fine-tune (GCL's control)",
     GCL_CONTROL[0] + "_last": "Seq2Seq (multi-turn), MLE fine-tune (GCL's control), last step"}
    | {run: f"Seq2Seq (multi-turn) + GCL {label}" for run, label in GCL_ABLATIONS[1:]}
    | {run + LAST: f"Seq2Seq (multi-turn) + GCL {label}, last step" for run, label in GCL_ABLATIONS[1:]}
    | {run: f"Seq2Seq (multi-turn) + GCL, k = {k}" for k, run in GCL_GROUP_SIZES if run != GCL_FULL}
    | {run + LAST: f"Seq2Seq (multi-turn) + GCL, k = {k}, last step"
       for k, run in GCL_GROUP_SIZES if run != GCL_FULL}
)
# GCL Table 3's rows: the paper's six (five learners and GCL), then our learners without a paper
# row (MMI-antiLM) and the MLE model the learners are measured against (its paper row: Table 2(a))
GCL_TABLE3_RUNS = (
    *paper.GCL_TABLE3, *(r for r in stats.GCL_TABLE3_LEARNERS if r not in paper.GCL_TABLE3), GCL_BASELINE,
)  # fmt: skip
PAPERS = {"pednet_table2": "PEDNet Table 2", "gcl_table2a": "GCL Table 2(a)", "gcl_table3": "GCL Table 3"}
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
PERSONA_CONTROL_COLUMNS = [
    ("P-F1", "persona_f1"), ("P-F1 shuffled", "persona_f1_shuffled"), ("P-F1 gain", "persona_f1_gain"),
    ("P-Cover", "persona_coverage"), ("P-Cover shuffled", "persona_coverage_shuffled"),
]  # fmt: skip
# The collapse diagnostic (pipeline.evaluation.metrics.QUERY_KEYS), nats per token; models only.
QUERY_COLUMNS = [
    ("log p(r \\| c)", "query_log_p_own"), ("log p(r \\| c′)", "query_log_p_shuffled"),  # "\\|": escaped pipe
    ("query gain (nats/token)", "query_gain"),
]  # fmt: skip
GCL_UNITS_NOTE = (
    "Ent-1/2 in bits. Our embedding metrics use this project's word vectors (data/embeddings), and "
    "Coherence is measured against the query (the last context utterance), so they are comparable "
    "across our rows, not with the paper's."
)
NO_LOG_PROBS = "—"  # a run whose generations predate the log-prob columns
METRIC_NAMES = {key: name for name, key in PEDNET_COLUMNS + GCL_COLUMNS + PERSONA_CONTROL_COLUMNS + QUERY_COLUMNS}


def display(model: str) -> str:
    return DISPLAY.get(model, model)


# ---------------------------------------------------------------- inputs


def load_metrics(path: str | os.PathLike) -> dict | None:
    """A reports/metrics/<run>/<seed K | control>.json, or None when it has not been evaluated."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"not JSON ({e.msg})", e.lineno) from None
    if not isinstance(values, dict):
        raise InputError(path, "expected a JSON object of metrics")
    missing = [k for k in METRIC_KEYS if k not in values]
    if missing:
        raise InputError(path, f"missing metric(s) {', '.join(missing)} (rerun `dvc repro evaluate`)")
    return values


def by_example(generations: Mapping[str, Sequence]) -> dict[str, dict]:
    """example_id -> row, from the columns ``pipeline.evaluation.metrics.read_generations`` returns."""
    names = list(generations)
    return {
        row["example_id"]: row
        for row in (
            dict(zip(names, values, strict=True)) for values in zip(*generations.values(), strict=True)
        )
    }


# ---------------------------------------------------------------- formatting


def gcl_decimals(value: float) -> int:
    """GCL's style: about four significant digits, at most three decimals."""
    if value == 0 or not math.isfinite(value):
        return 3
    return min(3, max(0, 3 - math.floor(math.log10(abs(value)))))


def fmt_fraction(value: float) -> str:
    """PEDNet's style: 0.037."""
    return f"{value:.3f}"


def fmt_percent_like_gcl(value: float) -> str:
    """GCL's style: 12.04, 3.995, 0.882."""
    return f"{value:.{gcl_decimals(value)}f}" if math.isfinite(value) else str(value)


def fmt_signed(value: float) -> str:
    """A difference: signed, three significant digits (+0.0148, -0.000630, +2.66e-08)."""
    if value == 0:
        return "0.000"
    if abs(value) < 1e-4:  # smoothed BLEU-3/4 differ by ~1e-9: fixed decimals would print 0
        return f"{value:+.2e}"
    return f"{value:+.{max(3, 2 - math.floor(math.log10(abs(value))))}f}"


def escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pednet_unit(key: str, value: float) -> tuple[float, int]:
    return value, 3


def _gcl_unit(key: str, value: float) -> tuple[float, int]:
    """Percent (entropies: bits), decimals chosen by the size of the value."""
    scaled = value if key in paper.BITS else 100 * value
    return scaled, gcl_decimals(scaled)


def fmt_summary(key: str, summary: Mapping, unit) -> str:
    """``mean ± sd`` in the table's unit, the sd to the decimals of the mean; one seed: the mean."""
    mean, decimals = unit(key, summary["mean"])
    if summary["sd"] is None:
        return f"{mean:.{decimals}f}"
    sd, _ = unit(key, summary["sd"])
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def _n_seeds(values: Mapping[str, dict]) -> int:
    """Seeds behind a run's summary (every metric has the same files behind it)."""
    return values[METRIC_KEYS[0]]["n_seeds"]


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _ours_cells(run: str, columns, summary: Mapping[str, dict], unit) -> list[str]:
    values = summary.get(run)
    if not values:
        return [NOT_RUN] + [""] * (len(columns) - 1)
    return [fmt_summary(key, values[key], unit) for _, key in columns]


def _source(run: str, summary: Mapping[str, dict], control: bool) -> str:
    if control:
        return "*control*"
    values = summary.get(run)
    return f"**ours** ({_seeds(_n_seeds(values))})" if values else "**ours**"


def _row_order(paper_models: Sequence[str], models: Sequence[str]) -> list[str]:
    return list(paper_models) + [m for m in models if m not in paper_models]


def comparison_table(
    columns: Sequence[tuple[str, str]],
    paper_table: dict[str, dict[str, str]],
    summary: Mapping[str, dict],
    models: Sequence[str],
    controls: Sequence[str],
    unit,
) -> str:
    """One row per (model, source): the paper's printed value, then ours (mean ± sd over
    seeds) in the paper's unit; the controls last."""
    rows = []
    for model in _row_order(list(paper_table), models):
        if model in paper_table:
            rows.append([display(model), "*paper*"] + [paper_table[model][key] for _, key in columns])
        if model in models:
            rows.append(
                [display(model), _source(model, summary, False)] + _ours_cells(model, columns, summary, unit)
            )
    for control in controls:
        rows.append([display(control), "*control*"] + _ours_cells(control, columns, summary, unit))
    return markdown_table(["Model", "Source"] + [name for name, _ in columns], rows)


def persona_control_table(summary: Mapping[str, dict], models: Sequence[str], controls: Sequence[str]) -> str:
    rows = [
        [display(run), _source(run, summary, run in controls)]
        + _ours_cells(run, PERSONA_CONTROL_COLUMNS, summary, _pednet_unit)
        for run in list(models) + list(controls)
    ]
    return markdown_table(["Model", "Source"] + [name for name, _ in PERSONA_CONTROL_COLUMNS], rows)


def query_gain_table(summary: Mapping[str, dict], models: Sequence[str]) -> str:
    """One row per model: the reference's log-prob per token given its own and a shuffled
    context, and the gain; "—" where a run's metrics lack them (older generations)."""
    rows = []
    for run in models:
        values = summary.get(run)
        if not values:
            cells = [NOT_RUN] + [""] * (len(QUERY_COLUMNS) - 1)
        else:
            cells = [fmt_summary(key, values[key], _pednet_unit) if key in values else NO_LOG_PROBS
                     for _, key in QUERY_COLUMNS]
        rows.append([display(run), _source(run, summary, False)] + cells)
    return markdown_table(["Model", "Source"] + [name for name, _ in QUERY_COLUMNS], rows)


# ---------------------------------------------------------------- degeneracy (mode collapse)


def collapsed(per_seed: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict[str, float]]:
    """run -> {seed file stem: top_reply_share} of its seeds above ``metrics.COLLAPSED_SHARE``."""
    return {run: bad for run, seeds in per_seed.items()
            if (bad := {stem: v["top_reply_share"] for stem, v in seeds.items()
                        if v.get("top_reply_share", 0.0) > metrics.COLLAPSED_SHARE})}


def flag_collapsed(claims: Sequence[dict], per_seed: Mapping[str, Mapping[str, Mapping]]) -> None:
    """Give each claim ``collapsed``: its runs' seeds (of those it compares) whose most frequent
    reply answers more than ``metrics.COLLAPSED_SHARE`` of the test turns, e.g.
    ``["transformer_history seed2"]``; a claim with any rests on a collapsed run."""
    bad = collapsed(per_seed)
    for c in claims:
        runs = (c["lower"], c["higher"])
        seeds = c.get("paired_seeds")
        c["collapsed"] = [f"{run} {stem}" for run in runs for stem in sorted(bad.get(run, {}))
                          if seeds is None or int(stem[len("seed"):]) in seeds]


def degeneracy_table(per_seed: Mapping[str, Mapping[str, Mapping]], models: Sequence[str],
                     controls: Sequence[str]) -> str:
    """Per run, each seed's distinct replies and top reply share, collapsed seeds in bold."""
    rows = []
    for run in [*models, *controls]:
        if not per_seed.get(run):
            rows.append([display(run), NOT_RUN, "", ""])
            continue
        seeds = {stem: v for stem, v in per_seed[run].items() if "top_reply_share" in v}
        if not seeds:  # metrics without generations beside them
            rows.append([display(run), NO_LOG_PROBS, NO_LOG_PROBS, ""])
            continue
        stems = sorted(seeds, key=lambda s: (len(s), s))
        share = [f"**{v:.2f}**" if v > metrics.COLLAPSED_SHARE else f"{v:.2f}"
                 for v in (seeds[s]["top_reply_share"] for s in stems)]
        rows.append([display(run), " / ".join(f"{seeds[s]['distinct_replies']:,}" for s in stems), " / ".join(share),
                     "**yes**" if any(seeds[s]["top_reply_share"] > metrics.COLLAPSED_SHARE for s in stems) else "no"])
    return markdown_table(["Run", "Distinct replies per seed", "Top reply share per seed", "Collapsed"], rows)


def _holds(value: bool | str) -> str:
    return {True: "yes", False: "**no**"}.get(value, value) if isinstance(value, bool) else value


def claim_text(claim: Mapping) -> str:
    metric = METRIC_NAMES.get(claim["metric"], claim["metric"])
    paper_name = PAPERS.get(claim["paper"], claim["paper"])
    return f"{display(claim['lower'])} < {display(claim['higher'])} on {metric} ({paper_name})"


def display_seed(run_seed: str) -> str:
    """``"transformer_history seed2"`` -> ``"Transformer (multi-turn) seed 2"``."""
    run, stem = run_seed.rsplit(" ", 1)
    return f"{display(run)} seed {stem[len('seed'):]}"


def claims_table(claims: Sequence[Mapping]) -> str:
    rows = []
    for c in claims:
        seeds = f"{c['n_seeds']['lower']} / {c['n_seeds']['higher']}"
        if c["holds"] == NOT_RUN:
            rows.append([claim_text(c), "", "", "", NOT_RUN, seeds])
            continue
        lo, hi = c["ci95"]
        flag = f" ⚠ collapsed: {', '.join(map(display_seed, c['collapsed']))}" if c.get("collapsed") else ""
        rows.append([claim_text(c), fmt_signed(c["difference"]), f"[{fmt_signed(lo)}, {fmt_signed(hi)}]",
                     f"{c['p_value']:.3f}", _holds(c["holds"]) + flag, seeds])  # fmt: skip
    return markdown_table(["Claim", "Difference", "95% CI", "p", "Holds", "Seeds (lower / higher)"], rows)


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
            raise InputError("params.yaml", f"report.case_ids: not in every model's generations: {unknown}")
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


def _ours_data(summary: Mapping[str, dict], models: Sequence[str], source: str) -> str:
    counts = sorted(
        {round(summary[m]["n_examples"]["mean"]) for m in models if "n_examples" in summary.get(m, {})}
    )
    n = ", ".join(f"{c:,}" for c in counts) if counts else "no"
    return f"**Ours**: the test split of {describe_source(source)}, as prepared by this pipeline ({n} test examples)."


def _case_seeds_note(case_seeds: Mapping[str, str]) -> str:
    stems = sorted(set(case_seeds.values()))
    if not stems:
        return ""
    if len(stems) == 1:
        return f"Every model's responses are from its {stems[0]} generations (the first seed present)."
    return "Responses from: " + ", ".join(f"{display(m)} {s}" for m, s in case_seeds.items()) + "."


def learner_deviations(params: Mapping) -> list[str]:
    """Sentences naming where params.yaml's DeepRL and MMI-bidi differ from their papers
    (reports/audits/baseline_probes.md: the papers' forms answer many turns with one sentence here)."""
    out = []
    if float(params.get("deeprl", {}).get("coherence_forward", 1.0)) != 1.0:
        out.append(f"DeepRL's semantic-coherence reward r3 weights its forward half log p(a | context) by "
                   f"{params['deeprl']['coherence_forward']:g} (`deeprl.coherence_forward`; the paper: 1), since "
                   "that half scores a constant generic question above the gold replies.")
    mmi = params.get("mmi", {})
    if mmi.get("nbest", "beam") != "beam":
        out.append(f"MMI-bidi reranks {mmi.get('n_best')} samples of p(T | S) (`mmi.nbest: sample`; the paper: "
                   "a beam's N-best), since the beam's list is near-identical generic replies.")
    return out


def render(
    summary: Mapping[str, dict],
    claims: Sequence[Mapping],
    generations: dict[str, dict[str, dict] | None],
    models: Sequence[str],
    controls: Sequence[str],
    source: str,
    case_studies: int = 3,
    case_ids: Sequence[str] = (),
    case_seeds: Mapping[str, str] | None = None,
    bootstrap: int = 1000,
    per_seed: Mapping[str, Mapping[str, Mapping]] | None = None,
    deviations: Sequence[str] = (),
) -> str:
    """The whole document. ``summary``: run -> metric -> ``pipeline.evaluation.stats.summarize``;
    ``claims``: ``pipeline.evaluation.stats.evaluate_claims``; ``generations``: model -> example_id ->
    row of the seed in ``case_seeds`` (None: not run)."""
    run = [m for m in models if summary.get(m)]
    not_run = [m for m in models if not summary.get(m)]
    table2a_models = [m for m in models if m not in stats.GCL_TABLE3_LEARNERS]
    table3_models = [m for m in GCL_TABLE3_RUNS if m in models]  # in the table's order
    controls_run = [c for c in controls if summary.get(c)]
    parts = [
        "# Results",
        "",
        "Generated by `dvc repro report` (stages/report.py) from reports/metrics/<run>/*.json and "
        "reports/generations/<run>/*.parquet; do not edit by hand. Rows marked *paper* are the papers' "
        "published numbers (pipeline/evaluation/paper_results.py), measured on different data (see below each table). "
        "Our rows are mean ± sd over training seeds (sample sd; reports/summary.json also has the 95% "
        "t-interval of each mean).",
        "",
        f"Evaluated: {', '.join(f'{display(m)} ({_seeds(_n_seeds(summary[m]))})' for m in run) or 'none yet'}."
        + (f" Not run yet: {', '.join(display(m) for m in not_run)}." if not_run else ""),
        "",
        "Controls (one deterministic file each, stages/controls.py): *Gold (reference)* answers every "
        "test turn with its reference response; *Constant reply* answers every turn with one fixed "
        "sentence (params `evaluate.constant_reply`)."
        + (
            f" Not run yet: {', '.join(display(c) for c in controls if c not in controls_run)}."
            if len(controls_run) < len(controls)
            else ""
        ),
        "",
        "## PEDNet Table 2: diversity and persona use",
        "",
        comparison_table(PEDNET_COLUMNS, paper.PEDNET_TABLE2, summary, models, controls, _pednet_unit),
        "",
        f"**Paper**: {paper.PEDNET_SOURCE}; PEDNet at K = 15. {_ours_data(summary, models, source)} "
        "Fractions, as the paper prints them.",
        "",
        "## GCL Table 2(a): relevance, diversity and informativeness",
        "",
        comparison_table(GCL_COLUMNS, paper.GCL_TABLE2A, summary, table2a_models, controls, _gcl_unit),
        "",
        f"**Paper**: {paper.GCL_SOURCE}. {_ours_data(summary, models, source)} "
        f"Percent, as the paper prints them; {GCL_UNITS_NOTE} The paper's four generators (Seq2Seq, HRED, "
        "Transformer, HRAN) all read the multi-turn history, as ours do: each trained by MLE, and that "
        "model fine-tuned by GCL. The learners of GCL Table 3 are in the next table.",
        "",
        "## GCL Table 3: GCL against other learning approaches on Seq2Seq",
        "",
        comparison_table(GCL_COLUMNS, paper.GCL_TABLE3, summary, table3_models, controls, _gcl_unit),
        "",
        f"**Paper**: {paper.GCL_TABLE3_SOURCE}. {_ours_data(summary, table3_models, source)} "
        f"Percent, as the paper prints them; {GCL_UNITS_NOTE} Every row is Seq2Seq reading the "
        "multi-turn history. Adversarial is decoded from its training's last step (a fixed budget); "
        "the paper's MMI row is beside our MMI-bidi (N-best reranking by the backward model); our "
        "MMI-antiLM has no paper row. GCL is the run of Table 2(a); Seq2Seq (multi-turn) is the MLE "
        "model the learners start from or are compared with (its paper row: Table 2(a)).",
        *(["", "**Not the papers' learners, by configuration:** " + " ".join(deviations)] if deviations else []),
        "",
        "## Persona use against a shuffled persona",
        "",
        persona_control_table(summary, models, controls),
        "",
        "The persona metrics again, scoring each response against another test dialogue's persona "
        "(a fixed pairing: the dialogue half-way along in sorted order, skipping identical personas; "
        "pipeline.evaluation.metrics.shuffled_partners). Generic persona-like words score against any persona; "
        "the gain (P-F1 − P-F1 shuffled) is what the own persona adds: about 0 for a reply that ignores it, "
        "such as the constant one.",
        "",
        "## Context use against a shuffled context",
        "",
        query_gain_table(summary, models),
        "",
        "The collapse diagnostic: the reference response's log-probability per token (`</s>` "
        "included) under each model, given its own context c and given c′, the context (query or "
        "history, specific words, congeneric contexts) of another test example, a fixed seeded pairing "
        "(params `generate.query_shuffle_seed`); the persona stays the example's own. The gain "
        "(mean over examples of the difference, nats/token) is what the context is worth to the "
        "model: about 0 for one that ignores its input. Controls have no model. "
        f"{NO_LOG_PROBS}: generations written before the diagnostic (rerun `dvc repro generate`).",
        "",
        "## Degenerate generations: one sentence for many turns",
        "",
        degeneracy_table(per_seed or {}, models, controls),
        "",
        "Distinct replies: how many different sentences a seed gives over the test turns (the gold "
        "responses are all distinct); top reply share: the share of turns given its most frequent one. "
        f"A seed above {metrics.COLLAPSED_SHARE:.2f} is **collapsed**: a comparison with it says little about "
        "the method, and every claim below that compares one is flagged ⚠.",
        "",
        "## The papers' claims on our runs",
        "",
        claims_table(claims),
        "",
        f"Difference: higher − lower, each the mean over the seeds both runs have (the seeds column: "
        "a fine-tune's seed K starts from its reference's seed K) on the full test set. 95% CI: paired "
        f"bootstrap, {bootstrap:,} replicates, each resampling the test examples and the shared seeds "
        "(the same draws for both runs); the percentile interval, centred on the difference "
        "(pipeline/evaluation/stats.py). Holds: yes if the CI is above 0, **no** if below, else not significant. "
        "p: two-sided bootstrap p-value. All numbers in reports/claims.json. Each claim is an order the "
        "paper prints: GCL Table 3's are GCL above each learner on Dist-2 and BLEU-1, except MMI above "
        "GCL on BLEU-1 (14.03 against 13.66); MMI-antiLM, without a paper row, is held to GCL above it.",
        "",
        "## Case study (like PEDNet Table 4)",
        "",
    ]
    note = _case_seeds_note(case_seeds or {})
    if note:
        parts += [note, ""]
    cases = pick_cases(generations, case_studies, case_ids)
    if not cases:
        parts.append("No generations yet.")
    for i, example_id in enumerate(cases):
        if i:
            parts.append("")
        parts.append(case_study(example_id, generations, models))
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- GCL Table 5 and Figure 3

ABLATION_COLUMNS = [
    ("Dist-1", "distinct_1"), ("Dist-2", "distinct_2"), ("Dist-3", "distinct_3"), ("BLEU-1", "bleu_1"),
    ("BLEU-2", "bleu_2"),
]  # fmt: skip
# the paired comparison with full GCL: Table 5's two metrics, to the decimals the paper prints
PAIRED_COLUMNS = [("Dist-2", "distinct_2", 3), ("BLEU-1", "bleu_1", 2)]
GROUP_SIZE_PLOTTED = [("Dist-2", "distinct_2"), ("BLEU-1", "bleu_1")]
PerSeed = Mapping[str, Mapping[int, Mapping[str, float]]]  # run -> training seed -> its metrics


# Each generator's GCL run against its MLE-only control (`<reference>_gcl_mle_only`, gcl.cl_weight 0)
GCL_GENERATORS = [("seq2seq_history", "Seq2Seq"), ("hred_history", "HRED"), ("transformer_history", "Transformer"),
                  ("hran_history", "HRAN"), ("pednet", "PEDNet")]  # fmt: skip
CONTROL_COLUMNS = [("Dist-1", "distinct_1", 3), ("Dist-2", "distinct_2", 3), ("Dist-3", "distinct_3", 3),
                   ("BLEU-1", "bleu_1", 2), ("BLEU-2", "bleu_2", 2)]  # fmt: skip


def gcl_ablation_runs() -> list[str]:
    """Every run reports/gcl_ablations.md reads: the MLE baseline, then each GCL run and its last
    step, then every generator's GCL run and MLE-only control (and their last steps)."""
    gcl = [run for run, _ in GCL_ABLATIONS] + [GCL_CONTROL[0]] + [r for _, r in GCL_GROUP_SIZES if r != GCL_FULL]
    gcl += [run for run, _ in GCL_OBJECTIVES if run not in gcl]
    runs = [GCL_BASELINE] + [r + suffix for r in gcl for suffix in ("", LAST)]
    others = [f"{ref}_gcl{tail}{suffix}" for ref, _ in GCL_GENERATORS for tail in ("", "_mle_only")
              for suffix in ("", LAST)]
    return runs + [r for r in others if r not in runs]


def run_summary(per_seed: PerSeed, run: str | None) -> dict[str, dict] | None:
    """metric -> ``stats.summarize`` over the run's seeds (ABLATION_COLUMNS); None: no seeds."""
    seeds = per_seed.get(run) if run else None
    if not seeds:
        return None
    return {key: stats.summarize([m[key] for m in seeds.values()]) for _, key in ABLATION_COLUMNS}


def _run_cells(per_seed: PerSeed, run: str | None) -> list[str]:
    """Dist-1/2/3, BLEU-1/2 as mean ± sd (percent), then the number of seeds."""
    summary = run_summary(per_seed, run)
    if summary is None:
        return [NOT_RUN] + [""] * (len(ABLATION_COLUMNS) - 1) + ["0"]
    n = len(per_seed[run])
    return [fmt_summary(key, summary[key], _gcl_unit) for _, key in ABLATION_COLUMNS] + [str(n)]


def _group_header(prefix: str) -> list[str]:
    return [f"{prefix}{name}" for name, _ in ABLATION_COLUMNS] + [f"{prefix}seeds" if prefix else "Seeds"]


def gcl_table5(per_seed: PerSeed) -> str:
    """One row per ablation (full, (a)-(f)) and the MLE baseline: the paper's Dist-2 / BLEU-1,
    ours at the selected checkpoint and at the last step."""
    header = ["Row", "Run", "Paper Dist-2", "Paper BLEU-1"] + _group_header("") + _group_header("Last: ")
    rows = []
    for run, label in GCL_ABLATIONS:
        printed = paper.GCL_TABLE5[run]
        rows.append([label, f"`{run}`", printed["distinct_2"], printed["bleu_1"]]
                    + _run_cells(per_seed, run) + _run_cells(per_seed, run + LAST))  # fmt: skip
    run, label = GCL_CONTROL  # not in the paper
    rows.append([label, f"`{run}`", "—", "—"] + _run_cells(per_seed, run) + _run_cells(per_seed, run + LAST))
    printed = paper.GCL_TABLE2A[GCL_BASELINE]
    baseline = _run_cells(per_seed, GCL_BASELINE)  # one checkpoint: in both groups
    rows.append(["MLE baseline (no GCL)", f"`{GCL_BASELINE}`", printed["distinct_2"], printed["bleu_1"]]
                + baseline + baseline)  # fmt: skip
    return markdown_table(header, rows)


def paired_difference(variant: Mapping[int, Mapping], full: Mapping[int, Mapping], key: str) -> dict | None:
    """variant − full on ``key`` over the seeds both have (seed K of each starts from seed K of
    the MLE reference, so seeds pair): mean, sd, t 95% CI (None for one seed), n, the seeds.
    None when no seed is shared. Fractions, as the metrics files."""
    seeds = sorted(set(variant) & set(full))
    if not seeds:
        return None
    s = stats.summarize([variant[k][key] - full[k][key] for k in seeds])
    ci = s["ci95"] if s["sd"] is not None else None
    return {"mean": s["mean"], "sd": s["sd"], "ci95": ci, "n": len(seeds), "seeds": seeds}


def fmt_points(fraction: float, decimals: int) -> str:
    """A difference of fractions in signed percentage points (no "-0.000")."""
    value = round(100 * fraction, decimals)
    return f"{(value if value else 0.0):+.{decimals}f}"


def _paired_cell(diff: dict | None, decimals: int) -> str:
    if diff is None:
        return NOT_RUN
    mean = fmt_points(diff["mean"], decimals)
    if diff["ci95"] is None:
        return f"{mean} (1 seed: no CI)"
    lo, hi = diff["ci95"]
    cell = f"{mean} [{fmt_points(lo, decimals)}, {fmt_points(hi, decimals)}]"
    return f"**{cell}**" if lo > 0 or hi < 0 else cell


def _paired_cells(variant: Mapping[int, Mapping], base: Mapping[int, Mapping],
                  columns: Sequence[tuple[str, str, int]]) -> list[str]:
    """variant − base per (name, key, decimals) column, then the number of paired seeds."""
    diffs = [paired_difference(variant, base, key) for _, key, _ in columns]
    return ([_paired_cell(diff, d) for diff, (_, _, d) in zip(diffs, columns, strict=True)]
            + [str(diffs[0]["n"]) if diffs[0] else "0"])


def _paired_header(columns: Sequence[tuple[str, str, int]]) -> list[str]:
    """The headers of ``_paired_cells`` at the selected checkpoint, then at the last step."""
    return [cell for prefix in ("", "Last: ")
            for cell in [f"{prefix}Δ {name}" for name, _, _ in columns] + [f"{prefix}seeds" if prefix else "Seeds"]]


def _paper_delta(run: str, key: str) -> str:
    """The paper's row − its full GCL, exactly (from the printed strings); "—" where it prints none."""
    full = paper.GCL_TABLE5[GCL_FULL][key]
    value = paper.GCL_TABLE5.get(run, {}).get(key) or (
        paper.GCL_TABLE2A[GCL_BASELINE][key] if run == GCL_BASELINE else None
    )
    return "—" if value is None else f"{Decimal(value) - Decimal(full):+f}"


def gcl_paired_table(per_seed: PerSeed) -> str:
    """Each ablation, group size and the MLE baseline against full GCL, seed by seed:
    the mean difference in percentage points and its t 95% CI, at both checkpoints."""
    compared = [(run, label) for run, label in GCL_ABLATIONS[1:]] + [GCL_CONTROL]
    compared += [(run, f"k = {k} (Figure 3)") for k, run in GCL_GROUP_SIZES if run != GCL_FULL]
    compared.append((GCL_BASELINE, "MLE baseline (no GCL)"))
    header = ["Row"] + [f"Paper Δ {name}" for name, _, _ in PAIRED_COLUMNS] + _paired_header(PAIRED_COLUMNS)
    rows = []
    for run, label in compared:
        cells = [label] + [_paper_delta(run, key) for _, key, _ in PAIRED_COLUMNS]
        # the MLE baseline has one checkpoint: against the full run's selected and last step
        for variant, full in ((run, GCL_FULL), (run if run == GCL_BASELINE else run + LAST, GCL_FULL + LAST)):
            cells += _paired_cells(per_seed.get(variant) or {}, per_seed.get(full) or {}, PAIRED_COLUMNS)
        rows.append(cells)
    return markdown_table(header, rows)


def gcl_control_table(per_seed: PerSeed) -> str:
    """Each generator's GCL run − its MLE-only control, paired by seed, at the selected
    checkpoint and at the last step: what the contrastive term adds to continued MLE."""
    header = ["Generator"] + _paired_header(CONTROL_COLUMNS)
    rows = []
    for ref, name in GCL_GENERATORS:
        cells = [f"{name} (`{ref}_gcl` − `{ref}_gcl_mle_only`)"]
        for suffix in ("", LAST):
            gcl, control = per_seed.get(f"{ref}_gcl{suffix}") or {}, per_seed.get(f"{ref}_gcl_mle_only{suffix}") or {}
            cells += _paired_cells(gcl, control, CONTROL_COLUMNS)
        rows.append(cells)
    return markdown_table(header, rows)


def gcl_objective_table(per_seed: PerSeed) -> str:
    """The default objective, its alternatives, the MLE-only control and the MLE baseline: ours
    at both checkpoints, and each row − the default paired by seed (Dist-2, BLEU-1)."""
    header = ["Objective", "Run"] + _group_header("") + _group_header("Last: ") + _paired_header(PAIRED_COLUMNS)
    rows = []
    for run, label in [*GCL_OBJECTIVES, (GCL_CONTROL[0], "The same fine-tune with MLE alone (cl_weight 0)"),
                       (GCL_BASELINE, "No fine-tune: the MLE reference")]:
        last = run if run == GCL_BASELINE else run + LAST  # the baseline has one checkpoint
        cells = [label, f"`{run}`"] + _run_cells(per_seed, run) + _run_cells(per_seed, last)
        for variant, default in ((run, GCL_FULL), (last, GCL_FULL + LAST)):
            if run == GCL_FULL:
                cells += ["—"] * len(PAIRED_COLUMNS) + ["—"]
            else:
                cells += _paired_cells(per_seed.get(variant) or {}, per_seed.get(default) or {}, PAIRED_COLUMNS)
        rows.append(cells)
    return markdown_table(header, rows)


def gcl_group_size_table(per_seed: PerSeed) -> str:
    header = ["k", "Run"] + _group_header("") + _group_header("Last: ")
    rows = [
        [str(k), f"`{run}`"] + _run_cells(per_seed, run) + _run_cells(per_seed, run + LAST)
        for k, run in GCL_GROUP_SIZES
    ]
    return markdown_table(header, rows)


def plot_group_sizes(per_seed: PerSeed, path: str | os.PathLike) -> None:
    """Dist-2 and BLEU-1 (percent) against k: mean and 95% t-CI over seeds, selected checkpoint
    and last step side by side; written atomically, stable bytes for the same metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GROUP_SIZE_PLOTTED), figsize=(4.5 * len(GROUP_SIZE_PLOTTED), 3.4),
                             constrained_layout=True)  # fmt: skip
    series = [("selected checkpoint", "", -0.06, "o"), ("last step", LAST, 0.06, "s")]
    for ax, (name, key) in zip(axes, GROUP_SIZE_PLOTTED, strict=True):
        plotted = False
        for label, suffix, shift, marker in series:
            points = []
            for k, run in GCL_GROUP_SIZES:
                summary = run_summary(per_seed, run + suffix)
                if summary is not None:
                    mean, (lo, hi) = 100 * summary[key]["mean"], summary[key]["ci95"]
                    points.append((k + shift, mean, mean - 100 * lo, 100 * hi - mean))
            if points:
                xs, means, below, above = zip(*points, strict=True)
                ax.errorbar(xs, means, yerr=[below, above], marker=marker, capsize=3, label=label)
                plotted = True
        if plotted:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([k for k, _ in GCL_GROUP_SIZES])
        ax.set_xlim(0.5, len(GCL_GROUP_SIZES) + 0.5)
        ax.set_xlabel("group size k")
        ax.set_title(f"{name} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("GCL Figure 3 on our runs: Seq2Seq (multi-turn) + GCL, test split of the slice\n"
                 "mean and 95% CI over training seeds (none: one seed); a k without runs has no point", fontsize=9)  # fmt: skip
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})  # no timestamp: stable bytes
    plt.close(fig)


def _n_examples(per_seed: PerSeed) -> str:
    counts = sorted({round(m["n_examples"]) for seeds in per_seed.values() for m in seeds.values()
                     if isinstance(m.get("n_examples"), int | float)})  # fmt: skip
    return ", ".join(f"{c:,}" for c in counts) if counts else "no"


def render_gcl_ablations(per_seed: PerSeed, seeds: Sequence[int], plot_name: str) -> str:
    """reports/gcl_ablations.md. ``per_seed``: run -> seed -> metrics, only seeds of ``seeds``
    (a run without any: absent or empty, "not run"); ``plot_name``: the PNG, relative to it."""
    runs = gcl_ablation_runs()
    done = [r for r in runs if per_seed.get(r)]
    missing = [r for r in runs if not per_seed.get(r)]
    seed_list = ", ".join(str(k) for k in seeds)
    n_variants = len(GCL_ABLATIONS) - 1 + sum(1 for _, r in GCL_GROUP_SIZES if r != GCL_FULL)
    parts = [
        "# GCL ablations (Table 5) and group size (Figure 3)",
        "",
        "Generated by `python -m stages.gcl_ablations` (stages/gcl_ablations.py) from "
        f"reports/metrics/<run>/seed<K>.json for the training seeds of params `seeds` ({seed_list}); "
        "do not edit by hand. Files of other seeds are ignored; a seed without metrics is left out of "
        "the means, and a run without any shows \"not run\" (its training may still be in flight).",
        "",
        "**Rows.** *GCL (full)* is `seq2seq_history_gcl`, GCL's default objective (group size k = 3) "
        "fine-tuned from seed K of the MLE baseline. (a)-(f) are the same training with one component "
        "of GCL off, each a params section `seq2seq_history_gcl_<v>` whose `gcl` keys override the default "
        "(params.yaml): (a) one positive (the original pair) and one negative (the worst candidate); "
        "(b) the original pair as the only positive; (c) no negatives; (d) context-side groups only; "
        "(e) response-side groups only; (f) s = +1 / −1 instead of the matcher's matching degrees. "
        "*Control* (`seq2seq_history_gcl_mle_only`, `gcl.cl_weight: 0`) is the same fine-tune with the "
        "contrastive term off: continued MLE training with GCL's steps, LR and checkpoint selection, so "
        "an effect of GCL is one that beats it, not only the MLE baseline. When the selected checkpoint "
        "is step 0 the run's selected row equals its MLE reference (Δ exactly 0 on that seed). "
        "*MLE baseline* is `seq2seq_history`, the reference every GCL run starts from and is scored "
        "against. Each GCL training has two checkpoints: the one selected on validation CL + 0.5 NLL "
        "(run `<run>`, the columns without prefix) and its final step (run `<run>_last`, the *Last:* "
        "columns). The MLE baseline has one checkpoint, shown in both groups.",
        "",
        f"**Data.** *Paper* columns: {paper.GCL_TABLE5_SOURCE}, as printed; the MLE baseline's row is "
        "from its Table 2(a). Ours are runs on the 2,000-dialogue slice of Persona-Chat "
        f"that this pipeline prepares by default ({_n_examples(per_seed)} test examples), with this "
        "project's smaller models and short fine-tunes: compare the direction and size of the effects "
        "within our rows, not our values with the paper's. Percent; our cells are mean ± sd over "
        "training seeds (sample sd), *Seeds* how many of `seeds` have metrics.",
        "",
        f"Evaluated: {', '.join(f'`{r}` ({_seeds(len(per_seed[r]))})' for r in done) or 'none yet'}."
        + (f" Not run yet: {', '.join(f'`{r}`' for r in missing)}." if missing else ""),
        "",
        "**How the runs are made.** For each variant `<v>` and seed K:",
        "",
        "```bash",
        "python -m stages.train_gcl seq2seq_history --seed K --run seq2seq_history_gcl_<v>",
        "python -m stages.generate seq2seq_history_gcl_<v> --seed K                    # selected checkpoint",
        "python -m stages.generate seq2seq_history_gcl_<v> --seed K --checkpoint last  # run seq2seq_history_gcl_<v>_last",
        "python -m stages.evaluate seq2seq_history_gcl_<v> --seed K",
        "python -m stages.evaluate seq2seq_history_gcl_<v>_last --seed K",
        "python -m stages.gcl_ablations                                                 # this report",
        "```",
        "",
        "Full GCL and the MLE baseline are dvc stages (`train_gcl`, `generate`, `generate_last`, "
        f"`evaluate`). The variants are not, on purpose: {n_variants} of them over {_seeds(len(seeds))} are "
        f"{n_variants * len(seeds)} more GCL fine-tunes, each with two decodes, which would exceed the budget "
        "of a default `dvc repro`; they are run by hand, when wanted. Nor is this report a stage: it reads "
        "whatever metrics exist.",
        "",
        "## Table 5: ablations",
        "",
        gcl_table5(per_seed),
        "",
        "## Each ablation against full GCL, seed by seed",
        "",
        gcl_paired_table(per_seed),
        "",
        "Δ: row − full GCL in percentage points, the mean over the seeds both runs have (seed K of each "
        "starts from seed K of the MLE baseline, so the seeds pair), with the Student t 95% CI of that mean "
        "over the paired seeds in brackets; *Seeds*: the number of pairs. The selected checkpoints are "
        "compared with full GCL's selected one, the last steps with its last step (the MLE baseline with "
        "both). An interval containing 0 means no detectable effect at this number of seeds; **bold**: "
        "the interval excludes 0. *Paper Δ*: the same difference of the paper's printed numbers (one run, "
        "no interval; Figure 3 prints no numbers).",
        "",
        "## Each generator's GCL against its MLE-only control",
        "",
        gcl_control_table(per_seed),
        "",
        "Δ: GCL − the same fine-tune with the contrastive term off (`gcl.cl_weight: 0`; same steps, LR, "
        "clipping and checkpoint selection), paired by seed, in percentage points with the t 95% CI as "
        "above. This separates the contrastive term from what a few hundred more MLE steps do: a GCL gain "
        "over the MLE baseline that this Δ does not show is continued training, not contrast. Selected "
        "checkpoints equal to step 0 (the reference) on both sides give Δ exactly 0. \"not run\": a side "
        "without metrics (the controls are run by hand: `python -m stages.train_gcl <reference> --run "
        "<reference>_gcl_mle_only --seed K`, then `generate --checkpoint last` and `evaluate`).",
        "",
        "## The default objective against its alternatives",
        "",
        gcl_objective_table(per_seed),
        "",
        "How `seq2seq_history_gcl`'s objective was chosen: the same groups, reference and checkpoint "
        "selection (validation CL + 0.5 NLL) with the MLE anchor off (`seq2seq_history_gcl_eq4`, "
        "`gcl.mle_weight: 0`), and the authors' code's recipe (`seq2seq_history_gcl_scratch`: the target "
        "trained from scratch, MLE alone for 3 epochs, then the contrastive term, to convergence; one "
        "checkpoint, so no *Last:* run). Δ: row − the default in percentage points, paired by seed, with "
        "the t 95% CI as above (its last step against the default's last step).",
        "",
        "## Figure 3: group size",
        "",
        gcl_group_size_table(per_seed),
        "",
        f"![Dist-2 and BLEU-1 against the group size k]({plot_name})",
        "",
        "k = 3 is full GCL (`seq2seq_history_gcl`); k = 1, 2 are `seq2seq_history_gcl_k1`, `_k2`, trained on "
        "the k best and worst candidates of the k = 3 groups. k = 4, 5 are `seq2seq_history_gcl_k4`, `_k5`, "
        "trained on their own wider selection (`python -m stages.select_groups --k K`, then "
        "`python -m stages.reference_scores seq2seq_history --seed S --k K`, then the commands above). "
        "Percent, mean ± sd over seeds; the plot draws the mean and its 95% t-CI over seeds (none for a "
        "single seed).",
    ]
    return "\n".join(parts) + "\n"
