"""Stage `check_params`: the whole params.yaml, checked once before any other stage runs.

Every stage depends on its output, so `dvc repro` and `make repro` (`dvc exp run`) stop
here, in a second, on an unknown section or key (named, with the closest known name), a
bad value, or bad ``seeds`` (missing, empty, repeated: they would shrink the DAG silently
and only the report would object, hours later). Its params are the whole file; its output
holds no param value, so a param change reruns this stage but leaves the stages that do
not read that param up to date.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.io import atomic_path, load_params, run_stage

OUT = Path("data/params_checked")


def main() -> None:
    load_params(require=("seeds",))  # every section, with file and line on an error
    with atomic_path(OUT) as tmp:
        tmp.write_text("params.yaml: valid\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
