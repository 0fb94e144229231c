"""SIGKILL stages at random points; a rerun of `dvc repro` must give the uninterrupted result."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from tests.dvc_project import PREPROCESSING, env, make_project, run
from tests.test_dvc_pipeline import digests


def kill_after(cmd: list[str], cwd, seconds: float) -> bool:
    """Start ``cmd`` in its own process group, SIGKILL the group after ``seconds``.
    Returns True if it was killed (False if it finished first)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@pytest.mark.slow
def test_killed_preprocessing_stages_recover_to_identical_outputs(tmp_path):
    reference = make_project(tmp_path / "ref")
    run(["dvc", "repro", *PREPROCESSING], reference)
    expected = digests(reference)

    repo = make_project(tmp_path / "killed")
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")))
    killed = 0
    for stage in PREPROCESSING:
        start = time.perf_counter()
        run(["dvc", "repro", "--force", "--single-item", stage], repo)
        took = time.perf_counter() - start
        # the stage's outputs exist now; kill a forced rerun part-way through
        killed += kill_after(["dvc", "repro", "--force", "--single-item", stage], repo, rng.uniform(0.2, 0.9) * took)
    assert killed >= len(PREPROCESSING) // 2, "too few runs were interrupted to prove anything"
    run(["dvc", "repro", *PREPROCESSING], repo)
    assert digests(repo) == expected
