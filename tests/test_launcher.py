"""bin/py, the stages' launcher: `dvc repro` works with or without the virtual environment
activated, and a Python without the project's packages stops with one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
import yaml

import stages
from tests.dvc_project import ROOT, env, make_project

LAUNCHER = ROOT / "bin" / "py"


def fake_python(path: Path, name: str) -> Path:
    """An executable that says which "python" it is and what it was asked to run."""
    path.mkdir(parents=True, exist_ok=True)
    exe = path / "python"
    exe.write_text(f'#!/bin/sh\necho "{name} $*"\n')
    exe.chmod(0o755)
    return exe


def launch(project: Path, *args: str, path: str, **extra: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_PYTHON", "DVC_ROOT")}
    return subprocess.run([str(project / "bin" / "py"), *args], cwd=project, capture_output=True, text=True,
                          env={**e, "PATH": path, **extra})


def test_every_stage_runs_through_the_launcher():
    stages_ = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages_.items():
        cmd = stage.get("cmd") or stage["do"]["cmd"]
        module = re.fullmatch(r"bin/py -m stages\.(\w+)( .*)?", cmd)
        assert module and (ROOT / "stages" / f"{module.group(1)}.py").exists(), (name, cmd)
    assert os.access(LAUNCHER, os.X_OK)


def test_launcher_prefers_the_projects_venv(tmp_path):
    project = tmp_path / "project"
    (project / "bin").mkdir(parents=True)
    shutil.copy2(LAUNCHER, project / "bin" / "py")
    on_path = fake_python(tmp_path / "path", "path")
    (tmp_path / "path" / "python3").symlink_to(on_path)
    path = f"{tmp_path / 'path'}:/usr/bin:/bin"

    # no .venv/: python3 on PATH (an activated environment)
    assert launch(project, "-m", "stages.fetch", path=path).stdout == "path -m stages.fetch\n"
    # a queued experiment's copy of the repository: the parent repository's .venv/
    fake_python(tmp_path / "parent" / ".venv" / "bin", "parent")
    out = launch(project, "-m", "stages.fetch", path=path, DVC_ROOT=str(tmp_path / "parent"))
    assert out.stdout == "parent -m stages.fetch\n"
    # the checkout's own .venv/, whatever PATH says, from any directory
    fake_python(project / ".venv" / "bin", "venv")
    assert launch(project, "-m", "stages.x", "a b", path=path).stdout == "venv -m stages.x a b\n"
    out = subprocess.run(["bin/py", "-V"], cwd=project, capture_output=True, text=True, env={"PATH": "/nonexistent"})
    assert out.stdout == "venv -V\n"
    # PIPELINE_PYTHON over everything
    chosen = fake_python(tmp_path / "chosen", "chosen")
    assert launch(project, "-V", path=path, PIPELINE_PYTHON=str(chosen)).stdout == "chosen -V\n"


def test_launcher_without_any_python_says_so_in_one_line(tmp_path):
    (tmp_path / "bin").mkdir()
    shutil.copy2(LAUNCHER, tmp_path / "bin" / "py")
    out = launch(tmp_path, "-V", path=str(tmp_path / "empty"))
    assert out.returncode == 127 and out.stdout == ""
    assert out.stderr == (f"error: no Python: {tmp_path}/.venv/bin/python does not exist (run `make install`) "
                          "and neither python3 nor python is on PATH\n")


def test_required_packages_are_pyprojects_dependencies():
    deps = [r for r in requires("persona-dialogue") if "extra ==" not in r]  # pyproject.toml, as installed
    names = {re.split(r"[=<>!~\[; ]", d)[0].lower().replace("_", "-") for d in deps}
    assert set(stages.REQUIRED) == names
    assert stages.missing_requirements() == []


def test_python_without_the_packages_stops_with_one_line():
    # -S: no site-packages, as the system Python without the project installed
    out = subprocess.run([sys.executable, "-S", "-m", "stages.fetch"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error: {sys.executable} lacks torch, ") and out.stderr.count("\n") == 1
    assert "run `make install`" in out.stderr


@pytest.fixture()
def project(tmp_path) -> Path:
    repo = make_project(tmp_path)
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text() + "/.venv\n")
    return repo


def dvc_repro(repo: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    """The venv's own dvc, PATH without the venv (not activated)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    return subprocess.run([dvc, "repro", *args], cwd=repo, capture_output=True, text=True,
                          env={**env(), "PATH": path})


def test_dvc_repro_without_the_venv_activated(project, tmp_path):
    """`.venv/bin/dvc repro` in a checkout with .venv/, PATH without it: the stages run on
    the checkout's .venv python."""
    (project / ".venv").symlink_to(sys.prefix)  # this test's environment as the checkout's .venv/
    proc = dvc_repro(project, "/usr/bin:/bin", "fetch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any((project / "data" / "raw").iterdir())


def test_dvc_repro_with_a_python_lacking_the_packages(project, tmp_path):
    """No .venv/ and a bare Python first on PATH: the stage stops with one line, no traceback."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    (bare / "python3").chmod(0o755)
    proc = dvc_repro(project, f"{bare}:/usr/bin:/bin", "fetch")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"error: {sys.executable} lacks torch, " in out and "Traceback" not in out, out
    assert not (project / "data" / "raw").exists()
