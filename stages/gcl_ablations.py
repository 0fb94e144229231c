"""GCL Table 5's ablations and Figure 3's group sizes on our runs (not a dvc stage: the
variant runs it reads are made by hand, see reports/gcl_ablations.md).

    python -m stages.gcl_ablations

Reads reports/metrics/<run>/seed<K>.json for K in params `seeds` and the runs of
``pipeline.evaluation.report.gcl_ablation_runs`` (the MLE baseline seq2seq_history, full GCL
seq2seq_history_gcl, its variants seq2seq_history_gcl_<v>, each also as <run>_last) and writes
  reports/gcl_ablations.md          Table 5 beside the paper's, each ablation against full GCL
                                    seed by seed, the group-size table,
  reports/plots/gcl_group_size.png  Dist-2 and BLEU-1 against k with 95% CIs.
Seeds without files are left out (a run with none shows "not run"); files of seeds not in
`seeds` are ignored.
"""

from __future__ import annotations

import argparse
import logging
import math
import os

from pipeline.evaluation import report
from pipeline.io import InputError, atomic_path, load_params, run_stage
from stages.evaluate import metrics_path

log = logging.getLogger(__name__)

OUT = "reports/gcl_ablations.md"
PLOT = "reports/plots/gcl_group_size.png"


def load_run(run: str, seeds: list[int]) -> dict[int, dict]:
    """seed -> metrics of the seeds that have a file; a bad file is an InputError naming it."""
    out = {}
    for k in seeds:
        path = metrics_path(run, k)
        values = report.load_metrics(path)
        if values is None:
            continue
        for _, key in report.ABLATION_COLUMNS:
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InputError(path, f"{key}: expected a finite number, got {v!r}")
        out[k] = values
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.gcl_ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.parse_args(argv)
    params = load_params()  # validated, `seeds` included
    if "seeds" not in params:
        raise InputError("params.yaml", "missing 'seeds' (the training seeds)")
    seeds = sorted(params["seeds"])
    per_seed = {run: load_run(run, seeds) for run in report.gcl_ablation_runs()}
    for run, values in per_seed.items():
        log.info("%s: %s", run, ", ".join(f"seed{k}" for k in values) or "not run")
    report.plot_group_sizes(per_seed, PLOT)
    text = report.render_gcl_ablations(per_seed, seeds, os.path.relpath(PLOT, os.path.dirname(OUT)))
    with atomic_path(OUT) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("wrote %s and %s", OUT, PLOT)


if __name__ == "__main__":
    run_stage(main)
