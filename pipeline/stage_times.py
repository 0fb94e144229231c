"""Where the pipeline's time goes: every stage records how long it ran, one command collects.

Each stage entry point (``pipeline.io.run_stage``) writes, after a successful run, one JSON
record per stage instance to ``.dvc/tmp/stage_times/<stage>.json`` (DVC's own scratch
directory: untracked, no stage's out or dep, so no output or hash changes): the instance
(``$DVC_STAGE``, e.g. ``train@seq2seq-1``; a hand-run stage is named by its command line), wall
seconds, peak RSS, torch threads, the precision its model work ran in, and the CPU. A queued
experiment runs in a copy under ``<repo>/.dvc/tmp/exps/``; its records go to ``<repo>``'s
directory all the same. ``PIPELINE_STAGE_TIMES=<dir>`` puts them elsewhere.

``python -m benchmarks --only stage_times`` collects them into ``reports/stage_times.json``
and sums them by kind (preprocessing, MSN/matcher, MLE training, ...) in
``reports/benchmarks.md``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

# What a stage notes about how it ran (pipeline.train.autocast notes the precision).
INFO: dict = {}

# stage name (before '@') -> kind, in the order the tables list them
KINDS = {
    "preprocessing": ("fetch", "prepare", "embeddings", "pmi", "persona_labels", "congeneric", "groups",
                      "select_groups"),
    "MSN / matcher": ("msn", "matcher", "score_groups"),
    "MLE training": ("train", "train_history", "train_history_models", "train_table3"),
    "reference scores": ("reference_scores",),
    "GCL fine-tunes": ("train_gcl",),
    "learners": ("train_learner", "generate_mmi"),
    "decoding": ("generate", "generate_last"),
    "evaluation": ("controls", "evaluate", "evaluate_control"),
    "report": ("report",),
}


def kind_of(stage: str) -> str:
    base = stage.split("@", 1)[0]
    return next((kind for kind, names in KINDS.items() if base in names), "other")


def note(**info) -> None:
    """Record facts about this stage's run (e.g. ``precision="fp32"``) for its time record."""
    INFO.update(info)


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def records_dir() -> Path:
    if custom := os.environ.get("PIPELINE_STAGE_TIMES"):
        return Path(custom)
    root = Path(os.environ.get("DVC_ROOT") or ".").resolve()
    if ".dvc" in root.parts:  # a queued experiment's copy: <repo>/.dvc/tmp/exps/...
        root = Path(*root.parts[: root.parts.index(".dvc")])
    return root / ".dvc" / "tmp" / "stage_times"


def stage_name(argv: list[str] | None = None) -> str:
    if name := os.environ.get("DVC_STAGE"):
        return name
    argv = sys.argv if argv is None else argv
    module = Path(argv[0]).stem if argv else "stage"
    return " ".join([f"stages.{module}", *argv[1:]])


def record(seconds: float, started: float) -> Path | None:
    """Write this process's record (never fails the stage: timing is a by-product)."""
    torch = sys.modules.get("torch")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    name = stage_name()
    try:  # the process's whole life: interpreter start and imports included
        import psutil

        wall = time.time() - psutil.Process().create_time()
    except Exception:
        wall = seconds
    rec = {
        "stage": name,
        "kind": kind_of(name),
        "wall_seconds": round(max(wall, seconds), 2),
        "main_seconds": round(seconds, 2),  # the stage's own work, after imports
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "peak_rss_gb": round(max(rss, children) / 2**30, 3),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "precision": INFO.get("precision"),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        **{k: v for k, v in INFO.items() if k != "precision"},
    }
    try:
        out = records_dir()
        out.mkdir(parents=True, exist_ok=True)
        path = out / (re.sub(r"[^A-Za-z0-9@_.-]+", "_", name) + ".json")
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        tmp.replace(path)
        return path
    except OSError:
        return None


def collect(directory: Path | None = None) -> dict:
    """Every record, by stage name, and the sums by kind."""
    directory = directory or records_dir()
    stages = {}
    for f in sorted(directory.glob("*.json")) if directory.exists() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        stages[rec["stage"]] = rec
    return {"stages": dict(sorted(stages.items())), "by_kind": by_kind(stages.values())}


def by_kind(records) -> dict:
    out = {kind: {"instances": 0, "wall_seconds": 0.0} for kind in [*KINDS, "other"]}
    for rec in records:
        cell = out[rec.get("kind") or kind_of(rec["stage"])]
        cell["instances"] += 1
        cell["wall_seconds"] = round(cell["wall_seconds"] + rec["wall_seconds"], 2)
    return {k: v for k, v in out.items() if v["instances"]}


def render(summary: dict) -> list[str]:
    """Markdown lines: the sums by kind."""
    kinds = summary.get("by_kind", {})
    total = sum(v["wall_seconds"] for v in kinds.values())
    cpus = sorted({r.get("cpu") for r in summary.get("stages", {}).values() if r.get("cpu")})
    lines = ["| kind | stage instances | wall minutes | share |", "|---|---|---|---|"]
    for kind, v in kinds.items():
        lines.append(f"| {kind} | {v['instances']} | {v['wall_seconds'] / 60:.1f} | "
                     f"{v['wall_seconds'] / max(total, 1e-9):.0%} |")
    lines.append(f"| **all** | {sum(v['instances'] for v in kinds.values())} | {total / 60:.1f} | |")
    if cpus:
        lines += ["", f"CPU: {', '.join(cpus)} (sums of single-stage wall times; stages run one after another)."]
    return lines


def _mle_stage(stages: dict, reference: str, seed: str) -> str | None:
    """The MLE training stage of run ``reference`` and ``seed`` (dvc.yaml's matrices name it
    by run or by architecture)."""
    arch = reference.removesuffix("_history")
    for name in (f"train@{reference}-{seed}", f"train_history@{reference}-{seed}",
                 f"train_history_models@{arch}-{seed}"):
        if name in stages:
            return name
    return None


def ratios(summary: dict) -> dict:
    """Each GCL fine-tune's wall time over its reference's MLE run (the issue's <= 1.5 goal):
    the largest as the headline, every pair in ``gcl_run_vs_mle_run_walls``."""
    stages = summary["stages"]
    pairs = {}
    for name, rec in stages.items():
        if name.startswith("train_gcl@"):
            reference, _, seed = name.split("@", 1)[1].rpartition("-")
            mle = _mle_stage(stages, reference, seed)
            if mle:
                pairs[name] = round(rec["wall_seconds"] / max(stages[mle]["wall_seconds"], 1e-9), 3)
    return {"gcl_run_vs_mle_run_wall": max(pairs.values()), "gcl_run_vs_mle_run_walls": pairs} if pairs else {}
