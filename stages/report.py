"""Stage `report`: the runs of params `report.models` over the training seeds of params
`seeds`, and the controls of `report.controls`.

    python -m stages.report

Reads reports/metrics/<run>/seed<K>.json and reports/generations/<run>/seed<K>.parquet
(controls: control.json / control.parquet) and writes
  reports/summary.json  run -> metric -> {mean, sd, ci95, n_seeds} over seeds,
  reports/claims.json   the papers' claims (pipeline.evaluation.stats.CLAIMS) under a paired bootstrap,
  reports/results.md    the tables beside the papers', the claims and a case study,
  reports/training.json how each run and seed stopped (reports/training/<run>/seed<K>.json).
Seeds without files are left out (a run with none shows "not run"); files of seeds not in
`seeds` are ignored, so a stale seed never slips into a mean.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.evaluation import metrics, report, stats
from pipeline.io import InputError, atomic_path, load_params, run_stage, write_json
from stages.evaluate import CONTROL, generations_path, metrics_path

log = logging.getLogger(__name__)

SUMMARY = "reports/summary.json"
DIGITS = 12  # significant digits kept in the JSON reports
CLAIMS = "reports/claims.json"
TRAINING = "reports/training.json"
OUT = "reports/results.md"


def training_records(runs: list[str], seeds: list[int]) -> dict:
    """{run: {"seeds": {seedK: record}, "summary": ...}} from each training stage's record."""
    import json

    from pipeline.train import training_record_path

    out = {}
    for run in runs:
        records = {}
        for k in seeds:
            path = training_record_path(run, k)
            if path.exists():
                try:
                    records[f"seed{k}"] = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise InputError(path, f"not JSON ({e.msg})") from None
        if records:
            values = list(records.values())
            out[run] = {"seeds": records, "summary": {
                **{key: stats.summarize([float(r[key]) for r in values])
                   for key in ("epochs", "steps", "best_val_ppl", "lr_decays")},
                "stopped": {why: sum(r["stopped"] == why for r in values) for why in sorted({r["stopped"] for r in values})},
                "best_step": [int(r["best_step"]) for r in values],
            }}
    return out


def training_table(records: dict) -> str:
    """results.md section: how training ended, per run (mean ± sd over seeds)."""
    def ms(v: dict, digits: int) -> str:
        return f"{v['mean']:.{digits}f}" + (f" ± {v['sd']:.{digits}f}" if v.get("sd") is not None else "")

    lines = ["## Training: to convergence", "",
             "Every MLE run trains until early stopping fires on validation NLL after at least one LR "
             "decay (params `train`); GCL runs fine-tune their reference for at most a fixed number of steps. "
             "Every run keeps the checkpoint best on its validation criterion: *Kept step* lists it per "
             "seed, and a fine-tune that kept step 0 is its reference unchanged. "
             "Mean ± sd over seeds; per seed in reports/training.json.", "",
             "| Run | Epochs | Steps | Kept step | Best valid PPL | LR decays | Stopped |",
             "|---|---|---|---|---|---|---|"]
    for run, r in records.items():
        s = r["summary"]
        stopped = ", ".join(f"{why} × {n}" for why, n in s["stopped"].items())
        kept = ", ".join(map(str, s["best_step"]))
        lines.append(f"| {report.display(run)} | {ms(s['epochs'], 1)} | {ms(s['steps'], 0)} | {kept} | "
                     f"{ms(s['best_val_ppl'], 2)} | {ms(s['lr_decays'], 1)} | {stopped} |")
    return "\n".join(lines) + "\n"


def _names(p: dict, key: str, allow_empty: bool) -> list[str]:
    value = p.get(key)
    if not isinstance(value, list) or (not value and not allow_empty) or len(set(value)) != len(value):
        what = "a list" if allow_empty else "a non-empty list"
        raise InputError("params.yaml", f"report.{key}: expected {what} of distinct items, got {value!r}")
    return [str(v) for v in value]


def _seeds(params: dict) -> list[int]:
    seeds = params.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise InputError(
            "params.yaml", f"seeds: expected a non-empty list of distinct items, each an integer >= 0, got {seeds!r}"
        )
    return sorted(seeds)


def _count(p: dict, key: str, minimum: int) -> int:
    value = p.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError("params.yaml", f"report.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def portable(obj):
    """``obj`` with every float rounded to DIGITS significant digits: sums over thousands of
    examples differ in the last bits between CPUs (SIMD widths), the committed bytes must not."""
    if isinstance(obj, float):
        return float(f"{obj:.{DIGITS}g}")
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v) for v in obj]
    return obj


def provenance() -> str:
    """The commit the numbers come from and how many stages were stale when they were
    reported (pipeline.staleness; this stage itself, running, is not counted)."""
    from pipeline.staleness import head_commit, stale_stages

    try:
        stale = stale_stages(exclude=("report",))
    except Exception as e:  # e.g. not a DVC repository (a hand run elsewhere): say so, do not fail
        log.warning("cannot list stale stages (%s: %s)", type(e).__name__, e)
        return f"Produced at commit `{head_commit()}`; the stale stages could not be listed ({type(e).__name__})."
    if not stale:
        return (f"Generated at commit `{head_commit()}`; every stage's recorded code, data and params matched "
                "that tree (`dvc.lock`): the numbers below follow from it.")
    shown = ", ".join(list(stale)[:5]) + (", ..." if len(stale) > 5 else "")
    return (f"Generated at commit `{head_commit()}`; **{len(stale)} stage(s) were stale** when it ran ({shown}): "
            "their recorded code, data or params differ from that tree, so their numbers come from older code. "
            "`python -m pipeline.staleness` lists them.")


def main() -> None:
    params = load_params()
    if "report" not in params:
        raise InputError("params.yaml", "missing section 'report'")
    p = params["report"]
    source = load_params("fetch")["source"]  # declared as a param of this stage in dvc.yaml
    idf_missing = load_params("evaluate")["idf_missing"]
    models = _names(p, "models", allow_empty=False)
    controls = _names(p, "controls", allow_empty=True)
    if both := sorted(set(models) & set(controls)):
        raise InputError("params.yaml", f"report.controls: shares {both} with report.models")
    replicates, bootstrap_seed = _count(p, "bootstrap", 1), _count(p, "bootstrap_seed", 0)
    seeds = _seeds(params)
    start = time.perf_counter()

    # per run, the files it may have: [(stem, seed)], seed None for a control
    files = {m: [(f"seed{k}", k) for k in seeds] for m in models} | {c: [(CONTROL, None)] for c in controls}
    per_seed = {run: {} for run in files}
    gens = {run: {} for run in files}
    for run, stems in files.items():
        for stem, seed in stems:
            values = report.load_metrics(metrics_path(run, seed))
            if Path(generations_path(run, seed)).exists():
                gens[run][stem] = metrics.read_generations(generations_path(run, seed))
            if values is not None:
                if stem in gens[run] and not all(k in values for k in metrics.DEGENERACY_KEYS):
                    # a metrics file written before evaluate had them: the same function on its generations
                    values = {**values, **metrics.degeneracy(gens[run][stem]["hypothesis"])}
                per_seed[run][stem] = values
        log.info("%s: metrics %s; generations %s", run, sorted(per_seed[run]) or "missing",
                 sorted(gens[run]) or "missing")  # fmt: skip
    summary = {}
    for run, values in per_seed.items():
        if values:
            try:
                summary[run] = stats.summarize_seeds(list(values.values()))
            except ValueError as e:
                raise InputError(f"reports/metrics/{run}", str(e)) from None

    # statistics only for claims whose two runs both have generations (the rest: "not run")
    have = [run for run in models if gens[run]]
    needs = stats.metrics_by_run(c for c in stats.CLAIMS if c.lower in have and c.higher in have)
    persona = any(m.startswith("persona_") for ms in needs.values() for m in ms)
    idf = metrics.load_idf(metrics.PERSONA_IDF) if persona else None
    example_stats = {
        run: [
            stats.example_stats(
                gens[run][stem], needs.get(run, ()), idf, idf_missing, generations_path(run, seed), seed
            )
            for stem, seed in files[run]
            if stem in gens[run]
        ]
        for run in have
    }
    claims = stats.evaluate_claims(stats.CLAIMS, example_stats, replicates, bootstrap_seed)
    report.flag_collapsed(claims, per_seed)
    log.info("%d claims (%d not run) in %.1f s", len(claims), sum(c["holds"] == stats.NOT_RUN for c in claims),
             time.perf_counter() - start)  # fmt: skip

    case_seeds = {m: min(gens[m], key=lambda stem: int(stem[len("seed") :])) for m in models if gens[m]}
    case_generations = {
        m: report.by_example(gens[m][case_seeds[m]]) if m in case_seeds else None for m in models
    }
    text = report.render(summary, claims, case_generations, models, controls, str(source), p["case_studies"],
                         p.get("case_ids") or [], case_seeds, replicates, per_seed,
                         report.learner_deviations(params))  # fmt: skip
    records = training_records(models, seeds)
    if records:
        text = text.rstrip("\n") + "\n\n" + training_table(records)
    text = text.replace("\n", "\n\n" + provenance() + "\n", 1)  # under the title
    write_json(portable(summary), SUMMARY)
    write_json(portable(claims), CLAIMS)
    write_json(records, TRAINING)
    with atomic_path(OUT) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    run_stage(main)
