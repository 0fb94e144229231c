"""SIGKILL stages at random points; a rerun of `dvc repro` must give the uninterrupted result."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import psutil
import pytest

from tests.dvc_project import PREPROCESSING, env, make_project, run
from tests.test_dvc_pipeline import digests


def stage_process(proc: subprocess.Popen, stage: str, deadline: float) -> psutil.Process | None:
    """The `python -m stages.<stage>` process that `dvc repro` (``proc``) started."""
    module = f"stages.{stage.split('@')[0]}"
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if module in child.cmdline():
                    return child
        except psutil.Error:
            pass
        time.sleep(0.005)
    return None


def run_stage_killing(repo, stage: str, after: float | None) -> tuple[bool, float]:
    """Force-run ``stage`` under `dvc repro`; with ``after``, SIGKILL the stage's own process
    that many seconds after it starts (a crash or OOM kill of the stage). Returns (killed,
    seconds the stage process lived)."""
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = stage_process(proc, stage, time.monotonic() + 120)
    assert child is not None, f"{stage}: no stage process seen"
    born = time.monotonic()
    killed = False
    if after is not None:
        try:
            child.wait(timeout=after)
        except psutil.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            killed = True
    else:
        child.wait()
    lived = time.monotonic() - born
    proc.wait(timeout=120)
    assert (proc.returncode != 0) == killed, f"{stage}: dvc exit {proc.returncode}, killed={killed}"
    return killed, lived


@pytest.mark.slow
def test_killed_preprocessing_stages_recover_to_identical_outputs(tmp_path):
    """Each preprocessing stage's process is SIGKILLed part-way through a forced rerun;
    `dvc repro` then rebuilds what is missing and every output equals an uninterrupted run.
    (SIGKILLing `dvc` itself can leave dvc.lock empty, which DVC cannot read: see README.)"""
    reference = make_project(tmp_path / "ref")
    run(["dvc", "repro", *PREPROCESSING], reference)
    expected = digests(reference)

    repo = make_project(tmp_path / "killed")
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")))
    killed = 0
    for stage in PREPROCESSING:
        run(["dvc", "repro", stage], repo)  # redo a killed upstream stage (DVC removed its outputs)
        _, lived = run_stage_killing(repo, stage, None)
        killed += run_stage_killing(repo, stage, rng.uniform(0.1, 0.9) * lived)[0]
    assert killed >= len(PREPROCESSING) // 2, "too few runs were interrupted to prove anything"
    run(["dvc", "repro", *PREPROCESSING], repo)
    assert digests(repo) == expected
