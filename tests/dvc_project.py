"""Build a throw-away copy of this project (git + DVC) around a tiny generated corpus.

End-to-end tests run the real `dvc` CLI in it, the way users do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
PREPROCESSING = ("fetch", "prepare", "embeddings", "pmi", "persona_labels", "congeneric", "groups")

# Small enough for seconds on a tiny corpus; everything else stays at the defaults.
TINY_PARAMS = {
    "embeddings": {"epochs": 2, "dim": 16},
    "pmi": {"min_count": 1, "threshold": 0.5},
}


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["PIPELINE_NO_PROGRESS"] = "1"
    e.setdefault("OMP_NUM_THREADS", "1")
    e["DVC_NO_ANALYTICS"] = "1"
    e["PYTHONPATH"] = ""  # the copy's own pipeline/ must win over the installed one
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stages_run(stdout: str) -> list[str]:
    """The stages a ``dvc repro`` ran, in order, from its "Running stage '<name>':" lines."""
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")]


def set_params(repo: Path, overrides: dict) -> None:
    """Update params.yaml sections key by key; a top-level value that is not a section
    (``seeds: [1, 2]``) is replaced."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section].update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(tmp: Path, corpus_sizes=(24, 8, 8), seed: int = 0, params: dict | None = None) -> Path:
    """A git+DVC copy of the project at ``tmp/project`` reading ``tmp/corpus``."""
    corpus = write_corpus(tmp / "corpus", sizes=corpus_sizes, seed=seed)
    repo = tmp / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    for pkg in ("pipeline", "stages", "bin"):  # bin/py: the stages' launcher (no .venv/ here: PATH's python)
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / ".gitignore", repo / ".gitignore")  # data/ and checkpoints/ ignored, as in the repository
    idf = tmp / "idf.tsv"  # stands in for ../shared's Persona Coverage table
    idf.write_text("dog\t3.5\nguitar\t4.0\ni\t0.1\n")
    overrides = {"fetch": {"source": str(corpus), "idf": str(idf)}, **TINY_PARAMS, **(params or {})}
    set_params(repo, overrides)
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "ci@example.com"], repo)
    run(["git", "config", "user.name", "ci"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo
