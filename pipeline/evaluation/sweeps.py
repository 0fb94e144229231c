"""Parameter sweeps of the papers' figures as queued DVC experiments, and their plots.

    python -m pipeline.evaluation.sweeps queue [k gamma group_size] [--values 1,5]  # dvc exp run --queue ...
    dvc queue start                                                      # run them (one at a time)
    python -m pipeline.evaluation.sweeps collect                                    # tables + plots

Each point is an experiment named ``sweep-<sweep>-<value>`` that reproduces only up to its
run's ``evaluate`` stages, one per training seed of params ``seeds`` (``evaluate@pednet-1``,
``evaluate@pednet-2``, ...; preprocessing and unrelated runs are restored from the cache).
The baseline's own value is the committed run (HEAD) itself, not an experiment.
``collect`` reads every seed's metrics (``reports/metrics/<run>/seed<K>.json``) of every
point and writes ``reports/sweeps/<sweep>.csv`` (per metric the mean over seeds, ``_sd``
and the 95% CI ``_lo`` .. ``_hi``, and ``n_seeds``; ``dvc plots show`` draws the means, see
dvc.yaml), a PNG beside it with 95% CI error bars, and ``reports/sweeps.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.evaluation.stats import summarize
from pipeline.io import InputError, atomic_path, run_stage

log = logging.getLogger(__name__)

PLOTTED = ("persona_f1", "persona_coverage", "distinct_2", "bleu_1")
COLUMNS = ("distinct_1", "distinct_2", "distinct_3", "persona_recall", "persona_precision", "persona_f1",
           "persona_coverage", "bleu_1", "bleu_2", "entropy_2")


@dataclass(frozen=True)
class Sweep:
    param: str             # dotted params.yaml key
    values: tuple
    model: str             # the run whose reports/metrics/<model>/seed<K>.json are read
    title: str

    def targets(self, seeds: list[int]) -> list[str]:
        """The run's evaluate stage of every seed (the dvc.yaml matrix ``evaluate@<run>-<K>``)."""
        return [f"evaluate@{self.model}-{seed}" for seed in seeds]

    def metrics_path(self, seed: int) -> str:
        return f"reports/metrics/{self.model}/seed{seed}.json"


SWEEPS = {
    "k": Sweep("pednet.k", (1, 5, 10, 15, 20), "pednet",
               "PEDNet: number of congeneric contexts K (PEDNet Table 2)"),
    "gamma": Sweep("pednet.gamma", (0.1, 0.3, 0.5, 0.7, 0.9), "pednet",
                   "PEDNet: probability γ of a PDNet batch (PEDNet Figure 2)"),
    "group_size": Sweep("gcl.k", (1, 2, 3, 4, 5), "seq2seq_history_gcl",
                        "Seq2Seq + GCL: group size k per side (GCL Figure 3)"),
}


def experiment_name(sweep: str, value) -> str:
    return f"sweep-{sweep}-{value}"


def lookup(params: dict, dotted: str):
    node = params
    for key in dotted.split("."):
        node = node[key]
    return node


def seeds_of(params: dict) -> list[int]:
    """The training seeds of params ``seeds`` (every sweep point trains each of them)."""
    seeds = params.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise InputError("params.yaml", f"seeds: expected a non-empty list of integers, got {seeds!r}")
    return seeds


def _dvc(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).parent / "dvc")
    return subprocess.run([dvc, *args], check=True, text=True, capture_output=capture)


def queue(names: list[str], values: list | None = None) -> list[str]:
    """Queue every point of the sweeps except the baseline's value; returns the names."""
    import dvc.api

    base = dvc.api.params_show(rev="HEAD")
    seeds = seeds_of(base)
    queued = []
    for name in names:
        sweep = SWEEPS[name]
        for value in values or sweep.values:
            if value == lookup(base, sweep.param):
                continue  # the committed run is this point
            exp = experiment_name(name, value)
            _dvc("exp", "run", "--queue", "--name", exp, "-S", f"{sweep.param}={value}", *sweep.targets(seeds))
            queued.append(exp)
    return queued


def _read_json(path: str, rev: str | None) -> dict | None:
    import dvc.api

    try:
        return json.loads(dvc.api.read(path, rev=rev))
    except Exception as e:  # missing experiment or file: that point is "not run"
        log.debug("%s@%s: %s", path, rev, e)
        return None


def _complete(metrics: dict) -> bool:
    return all(isinstance(v := metrics.get(k), int | float) and not isinstance(v, bool) and math.isfinite(v)
               for k in COLUMNS)


def summary_row(per_seed: list[dict]) -> dict:
    """Per metric of COLUMNS: ``m`` (mean over seeds), ``m_sd`` (None for one seed) and the
    95% CI ``m_lo`` .. ``m_hi``; ``n_seeds``. No seeds: ``n_seeds`` 0 and no metrics."""
    row: dict = {"n_seeds": len(per_seed)}
    if not per_seed:
        return row
    for key in COLUMNS:
        s = summarize([m[key] for m in per_seed])
        row.update({key: s["mean"], f"{key}_sd": s["sd"], f"{key}_lo": s["ci95"][0], f"{key}_hi": s["ci95"][1]})
    return row


def points(name: str, base_params: dict, read=_read_json) -> list[dict]:
    """One row per sweep value: the value, where it came from (HEAD or the experiment), the
    seeds found and the summary over them of the run's metrics (``summary_row``); a point
    without any seed's metrics was not run. Every point reads the seeds of HEAD's ``seeds``."""
    sweep = SWEEPS[name]
    base_value = lookup(base_params, sweep.param)
    seeds = seeds_of(base_params)
    rows = []
    for value in sorted({*sweep.values, base_value}):  # the committed run is a point either way
        rev = "HEAD" if value == base_value else experiment_name(name, value)
        found, per_seed = [], []
        for seed in seeds:
            metrics = read(sweep.metrics_path(seed), rev)
            if metrics is None:
                continue
            if not _complete(metrics):
                log.warning("%s@%s: missing some of %s; seed %d left out", sweep.metrics_path(seed), rev,
                            ", ".join(COLUMNS), seed)
                continue
            found.append(seed)
            per_seed.append(metrics)
        rows.append({"value": value, "source": rev, "seeds": found, **summary_row(per_seed)})
    return rows


def csv_fields() -> list[str]:
    return ["value", "source", "n_seeds", *(f"{k}{suffix}" for k in COLUMNS for suffix in ("", "_sd", "_lo", "_hi"))]


def write_csv(rows: list[dict], path: Path) -> None:
    """The points with at least one seed; an sd of one seed is an empty cell."""
    fields = csv_fields()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for row in rows:
            if row["n_seeds"]:
                w.writerow(row)


def plot(name: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = SWEEPS[name]
    done = [r for r in rows if r["n_seeds"]]
    counts = sorted({r["n_seeds"] for r in done})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}" if counts else "no"
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2), constrained_layout=True)
    for ax, key in zip(axes, PLOTTED, strict=True):
        means = [r[key] for r in done]
        below = [m - r[f"{key}_lo"] for m, r in zip(means, done, strict=True)]
        above = [r[f"{key}_hi"] - m for m, r in zip(means, done, strict=True)]
        ax.errorbar([r["value"] for r in done], means, yerr=[below, above], marker="o", capsize=3)
        ax.set_xlabel(sweep.param)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.title}\ntest split of the shared slice: mean and 95% CI over {seeds} training seeds")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})  # no timestamp: stable bytes
    plt.close(fig)


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "not run"
    sd = row[f"{key}_sd"]
    return f"{row[key]:.4f}" if sd is None else f"{row[key]:.4f} ± {sd:.4f}"


def render(tables: dict[str, list[dict]]) -> str:
    lines = ["# Parameter sweeps", "",
             "Queued DVC experiments on the shared slice (test split), collected by",
             "`python -m pipeline.evaluation.sweeps collect`; every other parameter at its `params.yaml` default.",
             "Each cell is the mean ± sd over the training seeds (params `seeds`; the column `seeds`",
             "lists those found); the 95% CIs are in `reports/sweeps/*.csv` (`<metric>_lo`, `_hi`)",
             "and the plots' error bars. The row marked HEAD is the committed run. Plots:",
             "`reports/sweeps/*.png`, or `dvc plots show` for the interactive HTML (means).", ""]
    for name, rows in tables.items():
        sweep = SWEEPS[name]
        lines += [f"## {sweep.title}", "", f"`{sweep.param}`, run `{sweep.model}`", "",
                  "| " + " | ".join([sweep.param, *COLUMNS, "seeds", "run"]) + " |",
                  "|" + "---|" * (len(COLUMNS) + 3)]
        for r in rows:
            cells = [_cell(r, k) for k in COLUMNS]
            found = ", ".join(map(str, r["seeds"])) or "none"
            lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {found} | {r['source']} |")
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
    ap = argparse.ArgumentParser(prog="python -m pipeline.evaluation.sweeps", description=__doc__,
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
