"""Parameter sweeps of the papers' figures as queued DVC experiments, and their plots.

    python -m pipeline.sweeps queue [k gamma group_size] [--values 1,5]  # dvc exp run --queue ...
    dvc queue start                                                      # run them (one at a time)
    python -m pipeline.sweeps collect                                    # tables + plots

Each point is an experiment named ``sweep-<sweep>-<value>`` that reproduces only up to its
model's ``evaluate`` stage (preprocessing and unrelated models are restored from the
cache). The baseline's own value is the committed run (HEAD) itself, not an experiment.
``collect`` reads every point's metrics from its experiment and writes
``reports/sweeps/<sweep>.csv`` (drawn by ``dvc plots show``, see dvc.yaml), a PNG beside it
and ``reports/sweeps.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import atomic_path, run_stage

log = logging.getLogger(__name__)

PLOTTED = ("persona_f1", "persona_coverage", "distinct_2", "bleu_1")
COLUMNS = ("distinct_1", "distinct_2", "distinct_3", "persona_recall", "persona_precision", "persona_f1",
           "persona_coverage", "bleu_1", "bleu_2", "entropy_2")


@dataclass(frozen=True)
class Sweep:
    param: str             # dotted params.yaml key
    values: tuple
    model: str             # whose reports/metrics/<model>.json is read
    title: str

    @property
    def target(self) -> str:
        return f"evaluate@{self.model}"


SWEEPS = {
    "k": Sweep("pednet.k", (1, 5, 10, 15, 20), "pednet",
               "PEDNet: number of congeneric contexts K (PEDNet Table 2)"),
    "gamma": Sweep("pednet.gamma", (0.1, 0.3, 0.5, 0.7, 0.9), "pednet",
                   "PEDNet: probability γ of a PDNet batch (PEDNet Figure 2)"),
    "group_size": Sweep("gcl.k", (1, 2, 3, 4, 5), "seq2seq_gcl",
                        "Seq2Seq + GCL: group size k per side (GCL Figure 3)"),
}


def experiment_name(sweep: str, value) -> str:
    return f"sweep-{sweep}-{value}"


def lookup(params: dict, dotted: str):
    node = params
    for key in dotted.split("."):
        node = node[key]
    return node


def _dvc(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).parent / "dvc")
    return subprocess.run([dvc, *args], check=True, text=True, capture_output=capture)


def queue(names: list[str], values: list | None = None) -> list[str]:
    """Queue every point of the sweeps except the baseline's value; returns the names."""
    import dvc.api

    base = dvc.api.params_show(rev="HEAD")
    queued = []
    for name in names:
        sweep = SWEEPS[name]
        for value in values or sweep.values:
            if value == lookup(base, sweep.param):
                continue  # the committed run is this point
            exp = experiment_name(name, value)
            _dvc("exp", "run", "--queue", "--name", exp, "-S", f"{sweep.param}={value}", sweep.target)
            queued.append(exp)
    return queued


def _read_json(path: str, rev: str | None) -> dict | None:
    import dvc.api

    try:
        return json.loads(dvc.api.read(path, rev=rev))
    except Exception as e:  # missing experiment or file: that point is "not run"
        log.debug("%s@%s: %s", path, rev, e)
        return None


def points(name: str, base_params: dict, read=_read_json) -> list[dict]:
    """One row per sweep value: the value, where it came from (HEAD or the experiment) and
    the model's metrics (none: the point was not run)."""
    sweep = SWEEPS[name]
    base_value = lookup(base_params, sweep.param)
    path = f"reports/metrics/{sweep.model}.json"
    rows = []
    for value in sorted({*sweep.values, base_value}):  # the committed run is a point either way
        rev = "HEAD" if value == base_value else experiment_name(name, value)
        metrics = read(path, rev)
        rows.append({"value": value, "source": rev, **({k: metrics.get(k) for k in COLUMNS}
                                                                   if metrics else {})})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["value", "source", *COLUMNS], lineterminator="\n")
        w.writeheader()
        for row in rows:
            if all(row.get(k) is not None for k in COLUMNS):
                w.writerow(row)


def plot(name: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = SWEEPS[name]
    done = [r for r in rows if r.get("persona_f1") is not None]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2), constrained_layout=True)
    for ax, key in zip(axes, PLOTTED, strict=True):
        ax.plot([r["value"] for r in done], [r[key] for r in done], marker="o")
        ax.set_xlabel(sweep.param)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.title}: test split of the shared slice")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})  # no timestamp: stable bytes
    plt.close(fig)


def render(tables: dict[str, list[dict]]) -> str:
    lines = ["# Parameter sweeps", "",
             "Queued DVC experiments on the shared slice (test split), collected by",
             "`python -m pipeline.sweeps collect`; every other parameter at its `params.yaml` default.",
             "The row marked HEAD is the committed run. Plots: `reports/sweeps/*.png`, or",
             "`dvc plots show` for the interactive HTML.", ""]
    for name, rows in tables.items():
        sweep = SWEEPS[name]
        lines += [f"## {sweep.title}", "", f"`{sweep.param}`, model `{sweep.model}`", "",
                  "| " + " | ".join([sweep.param, *COLUMNS, "run"]) + " |",
                  "|" + "---|" * (len(COLUMNS) + 2)]
        for r in rows:
            cells = ["not run" if r.get(k) is None else f"{r[k]:.4f}" for k in COLUMNS]
            lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {r['source']} |")
        lines.append("")
    return "\n".join(lines)


def collect(names: list[str], out: Path = Path("reports"), base_params: dict | None = None,
            read=_read_json) -> dict[str, list[dict]]:
    if base_params is None:
        import dvc.api

        base_params = dvc.api.params_show(rev="HEAD")  # the committed run, not the workspace
    tables = {name: points(name, base_params, read) for name in names}
    for name, rows in tables.items():
        write_csv(rows, out / "sweeps" / f"{name}.csv")
        plot(name, rows, out / "sweeps" / f"{name}.png")
    with atomic_path(out / "sweeps.md") as tmp:
        Path(tmp).write_text(render(tables))
    return tables


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.sweeps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["queue", "collect"])
    ap.add_argument("sweeps", nargs="*", help=f"any of {', '.join(SWEEPS)} (default: all)")
    ap.add_argument("--values", help="queue: comma-separated subset of the values, e.g. 1,5")
    args = ap.parse_args(argv)
    names = args.sweeps or list(SWEEPS)
    if unknown := [n for n in names if n not in SWEEPS]:
        ap.error(f"unknown sweep {unknown[0]!r}: choose from {', '.join(SWEEPS)}")
    if args.command == "queue":
        values = [json.loads(v) for v in args.values.split(",")] if args.values else None
        for exp in queue(names, values):
            print(f"queued {exp}")
        print("run them with: dvc queue start   (progress: dvc queue status / dvc queue logs <name>)")
    else:
        collect(names)
        print("wrote reports/sweeps.md and reports/sweeps/*.{csv,png}")


if __name__ == "__main__":
    run_stage(main)
