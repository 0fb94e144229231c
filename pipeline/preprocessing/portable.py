"""Preprocessing whose bytes do not depend on which x86 CPU ran it.

Gensim's Word2Vec (through SciPy's OpenBLAS) and the MiniLM labeller (through ATen's
vectorised kernels and oneDNN) pick their kernels from the CPU they find: OpenBLAS runs
Haswell kernels on this AMD EPYC but SkylakeX ones on an AVX-512 Intel Xeon, and ATen/oneDNN
run AVX-512 code where it exists. Different kernels round differently, Word2Vec's ten
epochs amplify that, and ``embeddings`` / ``persona_labels`` then hash differently on two
machines of the same kind, so everything downstream misses a shared DVC cache. Measured on
the shared slice (``python -m benchmarks`` does not need this; a test does): Word2Vec's
vectors change with OPENBLAS_CORETYPE (Haswell, SkylakeX, Sandybridge: three hashes), and
the labeller's cosines change with ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA, but not with
the thread count.

:func:`pin` fixes every one of those choices to AVX2 code, which every x86-64 CPU of the
last decade runs, before the libraries load. Only these two preprocessing stages call it:
training keeps the native bf16/AMX kernels, since models are not byte-identical across
machines anyway and are shared through the cache instead. ``PIPELINE_NATIVE_KERNELS=1``
turns the pin off (faster labelling in bf16, machine-dependent bytes).
"""

from __future__ import annotations

import os
import platform
import sys

# variable -> value; each library reads its variable when it loads or first dispatches
KERNELS = {
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's and SciPy's OpenBLAS (Gensim's BLAS calls)
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised CPU kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, which runs torch's fp32 linear layers on CPU
}
# modules that read KERNELS when they are imported (the others read them lazily)
_LOADS_AT_IMPORT = ("numpy", "scipy", "gensim", "torch")


def pin() -> dict[str, str]:
    """Set KERNELS in the environment (x86-64 only); return what was set.

    Must run before NumPy, SciPy, Gensim or torch is imported: a library already loaded has
    chosen its kernels, and then this raises rather than silently leaving bytes machine-
    dependent.
    """
    if os.environ.get("PIPELINE_NATIVE_KERNELS") or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    loaded = [m for m in _LOADS_AT_IMPORT if m in sys.modules]
    if loaded and any(os.environ.get(k) != v for k, v in KERNELS.items()):
        raise RuntimeError(f"pipeline.preprocessing.portable.pin() called after {', '.join(loaded)} was imported")
    os.environ.update(KERNELS)
    return dict(KERNELS)
