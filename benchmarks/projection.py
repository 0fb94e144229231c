"""The full DAG's wall time on this machine, projected from what was measured here.

``python -m benchmarks --only projection``: each MLE run's seconds per training step on this
CPU (``precision: auto``, the torch threads a stage gets), times the optimizer steps the
committed runs took to converge (reports/training/<run>/seed<K>.json), plus one validation
pass per epoch; the other stages from their measured stage-time records
(reports/stage_times.json, one seed), times the number of instances in the committed DAG.
A projection, not a measurement: it assumes every seed converges in the committed number of
steps, and per-step costs measured on a few batches."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.io import resolve_precision

MLE_RUNS = ("seq2seq", "gpmn", "postks", "pednet", "seq2seq_history", "hred_history", "hran_history",
            "transformer_history", "seq2seq_history_cvae", "seq2seq_history_dialogwae", "seq2seq_history_backward",
            "seq2seq_history_lm")
# stage kind -> (a measured instance of it, instances in the committed 3-seed DAG besides training)
OTHERS = {
    "reference_scores@seq2seq_history-1": 15, "train_gcl@seq2seq_history-1": 15 + 6,  # + DeepRL, adversarial
    "generate@seq2seq_history-1": 48 + 15 + 6, "evaluate@seq2seq_history-1": 69 + 2,
}
PREPROCESSING = ("fetch", "prepare", "embeddings", "pmi", "persona_labels", "congeneric", "groups", "msn",
                 "matcher", "score_groups", "select_groups")


def step_seconds(run: str, steps: int = 5) -> float:
    from benchmarks.measures import _timed_steps, _training_setup

    model, optimizer, ds, batches, cfg = _training_setup(run, steps, resolve_precision("auto", "cpu"))
    model.train()
    return _timed_steps(model, optimizer, [ds.collate(i) for i in batches], cfg)[0] / (len(batches) - 1)


VALIDATION_SHARE = 0.15  # one validation pass per epoch, as a share of the epoch's training steps


def dag_minutes(mle_runs: dict, preprocessing_seconds: float, other_seconds: dict,
                validation_share: float = VALIDATION_SHARE) -> dict:
    """The whole DAG's minutes from its parts: ``mle_runs`` run -> {"seconds_per_step",
    "committed_steps": [steps of each seed]} (each run's "minutes" is filled in), the
    preprocessing stages' summed seconds, and ``other_seconds``: OTHERS key -> seconds of one
    instance (times OTHERS' instance count). Used by `projection` and by the scale benchmark."""
    for r in mle_runs.values():
        r["minutes"] = round(sum(r["committed_steps"]) * r["seconds_per_step"] * (1 + validation_share) / 60, 1)
    mle = sum(r["minutes"] for r in mle_runs.values())
    others = {s: round(other_seconds[s] * n / 60, 1) for s, n in OTHERS.items() if s in other_seconds}
    pre = preprocessing_seconds / 60
    return {"total_minutes": round(mle + pre + sum(others.values()), 0), "mle_runs": mle_runs,
            "mle_minutes": round(mle, 1), "preprocessing_minutes": round(pre, 1), "other_stages_minutes": others,
            "validation_share": validation_share}


def committed_steps(run: str, seeds=(1, 2, 3)) -> list[int]:
    """The optimizer steps each committed seed of ``run`` took (reports/training)."""
    return [json.loads(p.read_text())["steps"] for k in seeds
            if (p := Path("reports/training") / run / f"seed{k}.json").exists()]


def projection(seeds=(1, 2, 3), validation_share: float = VALIDATION_SHARE) -> tuple[dict, dict]:
    records = json.loads(Path("reports/stage_times.json").read_text())["stages"]
    runs = {run: {"seconds_per_step": round(step_seconds(run), 3), "committed_steps": committed_steps(run, seeds)}
            for run in MLE_RUNS}
    pre = sum(records[s]["wall_seconds"] for s in PREPROCESSING if s in records)
    dag = dag_minutes(runs, pre, {s: records[s]["wall_seconds"] for s in OTHERS if s in records}, validation_share)
    return ({"projected_full_repro_minutes": dag["total_minutes"]},
            {k: dag[k] for k in ("mle_runs", "mle_minutes", "preprocessing_minutes", "other_stages_minutes",
                                 "validation_share")}
            | {"note": "3 seeds, one dvc repro process (2 threads); from reports/stage_times.json and the committed "
                       "steps"})
