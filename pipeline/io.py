"""Shared I/O for every stage: params, atomic and deterministic outputs, clear errors.

Stages write through these helpers so that (a) a killed stage never leaves a file
that looks finished, and (b) the same inputs give byte-identical Parquet, which is
what lets DVC's run-cache and shared remotes hit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

log = logging.getLogger("pipeline")

PARAMS_FILE = "params.yaml"


class InputError(Exception):
    """Bad input a user can fix: reported as one line ``file:line: problem``."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def load_params(section: str | None = None, path: str | os.PathLike = PARAMS_FILE,
                require: tuple[str, ...] = ()) -> dict:
    """Read ``params.yaml`` (or one top-level section of it), validated up front
    (pipeline.params_schema): a bad key is an InputError ``<section>.<key>: <problem>``
    before the stage does any work. The whole file: every section, and the sections of
    ``require`` must be there."""
    from pipeline import params_schema  # it imports InputError from here

    with open(path, encoding="utf-8") as f:
        try:
            params = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(path, f"not valid YAML: {getattr(e, 'problem', None) or e}",
                             line=mark.line + 1 if mark else None) from None
    if section is not None and (not isinstance(params, dict) or section not in params):
        raise InputError(path, f"missing section {section!r}")
    try:
        if section is None:
            params_schema.validate_all(params, require)
        else:
            params_schema.validate(section, params[section])
    except InputError as e:
        keys = getattr(e, "keys", None)
        line = params_schema.line_of(path, keys) if keys else e.line
        raise InputError(path, e.message, line=line) from None
    return params if section is None else params[section]


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; move it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary files
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically, with the same bytes for the same object: given a
    path, torch names the archive's root folder after the file, here a random temporary name;
    given a file object, it always names it "archive"."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; it replaces ``path`` only if the block
    succeeds, so a failed or killed stage never leaves a half-filled output directory."""
    path = Path(path)
    created_parent = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary folder
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_parent and not path.exists():
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def write_parquet(table: pa.Table | Any, path: str | os.PathLike) -> Path:
    """Write a table atomically with settings that make the bytes deterministic."""
    if not isinstance(table, pa.Table):  # a pandas DataFrame
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    log.info("wrote %s (%d rows)", path, table.num_rows)
    return Path(path)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Read `columns` (all when None); a missing file or column is one InputError naming it.

    The column check reads only the schema, so a file written by an older version of a stage
    says which column it lacks instead of failing deep inside pyarrow."""
    if not Path(path).exists():
        raise InputError(path, "file not found (did the upstream stage run?)")
    if columns is not None:
        have = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise InputError(path, f"no column {', '.join(missing)} (written by an older version of its stage? "
                                   "rerun it: dvc repro)")
    return pq.read_table(path, columns=columns)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return Path(path)


def native_cpu_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware (AVX-512-bf16 or AMX)?"""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``auto`` -> ``bf16`` on CUDA and on CPUs with bf16 units (AVX-512-bf16 / AMX), else
    ``fp32`` (emulated bf16 is several times slower than fp32); any other value as given."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" or native_cpu_bf16() else "fp32"


def warn_if_emulated_bf16() -> None:
    """Call before bf16 work on the CPU: one warning per process where the CPU has no bf16 units."""
    if not native_cpu_bf16():
        _warn_emulated_bf16()


@functools.cache
def _warn_emulated_bf16() -> None:
    # Without AVX-512-bf16/AMX oneDNN emulates bf16, ~16x slower than fp32 in a 512^3 matmul
    # on an AVX2-only EPYC; only an explicit bf16 gets here (auto resolves to fp32).
    import torch

    log.warning("bf16 on a CPU without AVX-512-bf16 or AMX (%s): bf16 matmuls are emulated, far slower than "
                "fp32; `precision: auto` (the default of train, generate and matcher) picks fp32 here",
                torch.backends.cpu.get_cpu_capability())


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr that DVC streams; quiet when PIPELINE_NO_PROGRESS is set."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", bool(os.environ.get("PIPELINE_NO_PROGRESS")))
    return tqdm(iterable, **kwargs)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def run_stage(main: Callable[[], Any]) -> None:
    """Entry point wrapper: logging on, InputError -> one clear line and exit code 2; a
    finished stage records its wall time (pipeline.stage_times)."""
    import time

    from pipeline import stage_times

    setup_logging()
    started, wall = time.perf_counter(), time.time()
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    stage_times.record(time.perf_counter() - started, wall)
