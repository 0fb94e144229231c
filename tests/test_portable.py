"""pipeline.preprocessing.portable: the preprocessing stages that float math feeds run the same kernels on
every x86 CPU, so that their outputs hash the same on two machines (a shared DVC cache)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.preprocessing import portable

ROOT = Path(__file__).resolve().parents[1]
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 kernels")

PROBE = """
import json, os, sys
from pipeline.preprocessing.portable import pin
pin()
import numpy, threadpoolctl
print(json.dumps({"env": {k: os.environ.get(k) for k in %r},
                  "blas": sorted({i["architecture"] for i in threadpoolctl.threadpool_info()})}))
"""


def _probe(**env) -> dict:
    full = {**os.environ, **env}
    full.pop("PIPELINE_NATIVE_KERNELS", None)
    full.update({k: v for k, v in env.items()})
    out = subprocess.run([sys.executable, "-c", PROBE % list(portable.KERNELS)], cwd=ROOT, env=full,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@x86
def test_pin_forces_the_same_kernels_whatever_the_machine_would_pick():
    # OPENBLAS_CORETYPE=SkylakeX is what OpenBLAS picks on an AVX-512 Intel Xeon
    for preset in ({}, {"OPENBLAS_CORETYPE": "SkylakeX", "ATEN_CPU_CAPABILITY": "avx512"}):
        got = _probe(**preset)
        assert got["env"] == portable.KERNELS
        assert got["blas"] == ["Haswell"]


@x86
def test_native_kernels_on_request():
    got = _probe(PIPELINE_NATIVE_KERNELS="1", OPENBLAS_CORETYPE="SkylakeX")
    assert got["env"]["OPENBLAS_CORETYPE"] == "SkylakeX"
    assert got["blas"] == ["SkylakeX"]


@x86
def test_pin_after_numpy_loaded_is_an_error(monkeypatch):
    import numpy  # noqa: F401  (already loaded by the test session; made explicit)

    monkeypatch.delenv("PIPELINE_NATIVE_KERNELS", raising=False)
    for k in portable.KERNELS:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="after numpy"):
        portable.pin()
    assert all(k not in os.environ for k in portable.KERNELS)


def test_importing_a_stage_does_not_pin_the_importing_process(monkeypatch):
    """Only `python -m stages.embeddings` pins; a test or notebook importing the module keeps
    its native (bf16/AMX) kernels."""
    import importlib

    for k in portable.KERNELS:
        monkeypatch.delenv(k, raising=False)
    for name in ("stages.embeddings", "stages.persona_labels"):
        sys.modules.pop(name, None)
        importlib.import_module(name)
    assert all(k not in os.environ for k in portable.KERNELS)
