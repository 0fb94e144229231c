"""Run the preprocessing stages on the raw slice replicated N times; time and peak RSS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREPROCESSING = ("fetch", "prepare", "embeddings", "pmi", "persona_labels", "congeneric", "groups")


def replicate_corpus(src: Path, dst: Path, factor: int) -> Path:
    """Concatenate every ParlAI file ``factor`` times: each copy's dialogues get fresh ids
    because `prepare` numbers dialogues by position."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.txt")):
        text = f.read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        (dst / f.name).write_text(text * factor, encoding="utf-8")
    return dst


# Linux starts a forked child's peak RSS at its parent's (kept across exec), so a stage
# started from this (large) process would report our RSS. A small trampoline process
# forks the stage instead and prints the stage's own peak RSS (KiB).
_TRAMPOLINE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], cwd: Path, env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _TRAMPOLINE, *cmd], cwd=cwd, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-2000:]}")
    return seconds, int(proc.stdout.split()[-1]) * 1024  # Linux reports kilobytes


def scale_project(workdir: Path, raw: Path, factor: int) -> Path:
    project = workdir / f"x{factor}"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    for pkg in ("pipeline", "stages"):
        shutil.copytree(ROOT / pkg, project / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    corpus = replicate_corpus(raw, workdir / f"corpus_x{factor}", factor)
    params["fetch"]["source"] = str(corpus)
    params["prepare"]["duplicates"] = "keep"  # the copies are duplicated dialogues on purpose
    if params["fetch"].get("idf"):  # relative to this checkout, not to the scratch project
        params["fetch"]["idf"] = str((ROOT / params["fetch"]["idf"]).resolve())
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def bench_scale(raw: Path, factors: list[int], workdir: Path, stages=PREPROCESSING) -> dict:
    env = dict(os.environ, PIPELINE_NO_PROGRESS="1", PYTHONPATH="")
    results: dict = {}
    for factor in factors:
        project = scale_project(workdir, raw, factor)
        for stage in stages:
            seconds, rss = run_measured([sys.executable, "-m", f"stages.{stage}"], project, env)
            results.setdefault(stage, {})[f"x{factor}"] = {"seconds": round(seconds, 2), "peak_rss_bytes": rss}
            print(f"  scale x{factor} {stage}: {seconds:.1f} s, {rss / 2**20:.0f} MiB", file=sys.stderr)
        shutil.rmtree(project)
        shutil.rmtree(workdir / f"corpus_x{factor}")
    return results


def growth(per_stage: dict, factors: list[int]) -> dict:
    """Cost at the largest factor relative to linear growth from the smallest."""
    lo, hi = f"x{min(factors)}", f"x{max(factors)}"
    ratio = max(factors) / min(factors)
    out = {}
    for stage, runs in per_stage.items():
        if lo in runs and hi in runs and runs[lo]["seconds"] > 0:
            out[stage] = round(runs[hi]["seconds"] / (runs[lo]["seconds"] * ratio), 2)
    return out
