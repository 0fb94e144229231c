"""Stage `report`: reports/results.md, this project's metrics beside the papers' tables and a
case study. Models in params `report.models` without metrics or generations show "not run"."""

from __future__ import annotations

import logging

from pipeline import report
from pipeline.io import InputError, atomic_path, load_params, run_stage

log = logging.getLogger(__name__)

OUT = "reports/results.md"


def main() -> None:
    p = load_params("report")
    source = load_params("fetch")["source"]  # declared as a param of this stage in dvc.yaml
    models = list(p["models"])
    if not models or len(set(models)) != len(models):
        raise InputError(
            "params.yaml", f"report.models must be a non-empty list without repeats, got {models}"
        )
    ours = {m: report.load_metrics(f"reports/metrics/{m}.json") for m in models}
    generations = {m: report.load_generations(f"reports/generations/{m}.parquet") for m in models}
    for m in models:
        log.info("%s: metrics %s, generations %s", m, "found" if ours[m] else "missing",
                 f"{len(generations[m])} rows" if generations[m] else "missing")  # fmt: skip
    text = report.render(ours, generations, models, str(source), p["case_studies"], p.get("case_ids") or [])
    with atomic_path(OUT) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    run_stage(main)
