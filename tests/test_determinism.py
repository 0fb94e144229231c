"""Determinism tiers of the model stages (README "Determinism"): each stage rerun alone, on the
same inputs, (a) as it was, (b) with 2 threads instead of 1, (c) with another CPU's kernels;
its outputs are compared with the first run's, byte for byte ("identical") or within a stated
tolerance ("close": float rounding, far below the spread between training seeds).

The preprocessing stages' tiers are tested in test_dvc_pipeline.py (every output byte-identical
when forced, and under 2 threads plus another CPU's kernels).

"Another CPU" can only be emulated on the CPU that runs the test: ATen's vectorised kernels one
level below the native ones (ATEN_CPU_CAPABILITY), MKL's CPU-independent code branch instead of
the native one (MKL_CBWR=COMPATIBLE; MKL_ENABLE_INSTRUCTIONS changed nothing on the AVX2 EPYC),
oneDNN capped at SSE4.1 and OpenBLAS on older kernels. Where that already changes a stage's
bytes, the stage is not byte-identical across CPUs; where it does not (select_groups, evaluate:
no float kernels of their own), the claim rests on their code (integer and Python arithmetic)
as much as on this test. bf16 (chosen by ``precision: auto`` on CPUs with AVX-512-bf16/AMX)
cannot be emulated this way; test_train.py::test_bf16_and_fp32_paths covers it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.dvc_project import env, make_project
from tests.test_dvc_pipeline import other_cpu_kernels
from tests.test_full_dag import TINY_DAG

RUN = ["seq2seq_history", "--seed", "1"]
# stage -> (arguments of `python -m stages.<stage>`, its outputs), in an order that runs
STAGES = {
    "train": (RUN, ["checkpoints/seq2seq_history/seed1"]),
    "generate": (RUN, ["reports/generations/seq2seq_history/seed1.parquet"]),
    "evaluate": (RUN, ["reports/metrics/seq2seq_history/seed1.json"]),
    "msn": ([], ["checkpoints/msn", "reports/msn.json"]),
    "matcher": ([], ["checkpoints/matcher", "reports/matchers.json"]),
    "score_groups": ([], ["data/msn_scores"]),
    "select_groups": ([], ["data/scored_groups", "reports/scored_groups.json"]),
    "reference_scores": (RUN, ["data/reference_scores/seq2seq_history/seed1"]),
    "train_gcl": (RUN, ["checkpoints/seq2seq_history_gcl/seed1"]),
}
# what each stage reads besides the preprocessing (run once per module, when first needed)
NEEDS = {"generate": ("train",), "evaluate": ("train", "generate"), "score_groups": ("msn", "matcher"),
         "select_groups": ("msn", "matcher", "score_groups"),
         "reference_scores": ("train", "msn", "matcher", "score_groups", "select_groups"),
         "train_gcl": ("train", "msn", "matcher", "score_groups", "select_groups", "reference_scores")}
PREPROCESSING = ("fetch", "prepare", "embeddings", "groups")  # what the chain reads
# In the default run: one tier of each kind (training close across threads and kernels,
# decoding and evaluation identical across threads, close across kernels); the rest are slow.
FAST = ("train", "generate", "evaluate")


def conditions() -> dict[str, dict[str, str]]:
    return {
        "rerun": {},
        "threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        "cpu_kernels": {**other_cpu_kernels(), "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    }


# stage -> tier under (rerun, threads, cpu_kernels); the README's table says the same
TIERS = {
    "msn": ("identical", "close", "close"),
    "matcher": ("identical", "close", "close"),
    "score_groups": ("identical", "identical", "close"),
    "select_groups": ("identical", "identical", "identical"),
    "train": ("identical", "close", "close"),
    "reference_scores": ("identical", "identical", "close"),
    "train_gcl": ("identical", "close", "close"),
    "generate": ("identical", "identical", "close"),
    "evaluate": ("identical", "identical", "close"),  # NumPy's BLAS sums in the embedding metrics
}
# "close": float rounding of the order of 1e-6 here; two training seeds differ by ~0.1 in a
# weight and far more than this in every score
ATOL = 1e-4
# wall-clock fields of the metrics files: never reproducible, left out of every comparison
CLOCK = ("train_seconds", "eval_seconds", "total_seconds")


def stage(repo: Path, name: str, extra_env: dict | None = None) -> None:
    args = STAGES[name][0] if name in STAGES else []
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=repo,
                          env={**env(), "OMP_NUM_THREADS": "1", **(extra_env or {})}, capture_output=True, text=True)
    assert proc.returncode == 0, f"stages.{name} failed:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The tiny project after the preprocessing, and ``ensure(name)``: the stage and what it
    reads run there once (1 thread, native kernels)."""
    repo = make_project(tmp_path_factory.mktemp("determinism"), params=TINY_DAG)
    for name in PREPROCESSING:
        stage(repo, name)
    done: set[str] = set()

    def ensure(name: str) -> Path:
        for n in (*NEEDS.get(name, ()), name):
            if n not in done:
                stage(repo, n)
                done.add(n)
        return repo

    return ensure


def rerun(chain: Path, tmp: Path, name: str, extra_env: dict) -> Path:
    """A copy of the project (hard links: stages write new files atomically) without the
    stage's outputs, the stage run there again."""
    repo = tmp / "again"
    shutil.copytree(chain, repo, copy_function=os.link, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    for out in STAGES[name][1]:
        p = repo / out
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    stage(repo, name, extra_env)
    return repo


def files(repo: Path, outs: list[str]) -> dict[str, Path]:
    found = {}
    for out in outs:
        p = repo / out
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                found[str(f.relative_to(repo))] = f
    assert found, outs
    return found


def without_clock(x):
    if isinstance(x, dict):
        return {k: without_clock(v) for k, v in x.items() if k not in CLOCK}
    if isinstance(x, list):
        return [without_clock(v) for v in x]
    return x


def assert_identical(a: Path, b: Path, rel: str) -> None:
    if rel.endswith(".json") and rel.startswith("reports/"):  # metrics with wall-clock seconds
        assert without_clock(json.loads(a.read_text())) == without_clock(json.loads(b.read_text())), rel
    else:
        assert a.read_bytes() == b.read_bytes(), rel


def tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    out = {}

    def walk(x, key):
        if isinstance(x, torch.Tensor):
            out[key] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}[{i}]")

    walk(torch.load(path, map_location="cpu", weights_only=True), "")
    return out


def assert_numbers_close(x, y, where: str) -> None:
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_numbers_close(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_numbers_close(u, v, f"{where}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        assert math.isclose(x, y, rel_tol=ATOL, abs_tol=ATOL), f"{where}: {x} vs {y}"
    else:
        assert x == y, where


def assert_close(a: Path, b: Path, rel: str) -> None:
    if a.suffix in (".pt", ".safetensors"):
        ta, tb = tensors(a), tensors(b)
        assert ta.keys() == tb.keys(), rel
        for k in ta:
            if ta[k].is_floating_point():
                assert torch.allclose(ta[k].double(), tb[k].double(), rtol=0, atol=ATOL), f"{rel}{k}"
            else:
                assert torch.equal(ta[k], tb[k]), f"{rel}{k}"
    elif a.suffix == ".parquet":
        x, y = pq.read_table(a), pq.read_table(b)
        assert x.schema == y.schema and x.num_rows == y.num_rows, rel
        for col in x.column_names:
            u, v = x[col].combine_chunks(), y[col].combine_chunks()
            while pa.types.is_list(u.type) or pa.types.is_large_list(u.type):  # same lengths, then the values
                assert u.value_lengths().equals(v.value_lengths()), f"{rel}:{col}"
                u, v = u.flatten(), v.flatten()
            if pa.types.is_floating(u.type):
                fu, fv = u.to_numpy(zero_copy_only=False), v.to_numpy(zero_copy_only=False)
                assert np.allclose(fu, fv, rtol=0, atol=ATOL, equal_nan=True), f"{rel}:{col}"
            else:  # ids, text: exactly equal
                assert u.equals(v), f"{rel}:{col}"
    elif a.suffix == ".json":
        assert_numbers_close(without_clock(json.loads(a.read_text())), without_clock(json.loads(b.read_text())), rel)
    else:  # tokenizer files, vocabularies: no floats, identical
        assert a.read_bytes() == b.read_bytes(), rel


@pytest.mark.parametrize("condition", ["rerun", "threads", "cpu_kernels"])
@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in STAGES])
def test_stage_tier(chain, tmp_path, name, condition):
    tier = TIERS[name][list(conditions()).index(condition)]
    repo = chain(name)
    again = rerun(repo, tmp_path, name, conditions()[condition])
    first, second = files(repo, STAGES[name][1]), files(again, STAGES[name][1])
    assert first.keys() == second.keys()
    for rel in first:
        (assert_identical if tier == "identical" else assert_close)(first[rel], second[rel], rel)
