"""End to end: the preprocessing DAG under the real `dvc` CLI on a tiny generated corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.dvc_project import PREPROCESSING, make_project, run, set_params, stages_run


def digests(repo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted((repo / "data").rglob("*"))
        if p.is_file()
    }


def repro(repo: Path, *extra: str):
    return run(["dvc", "repro", *extra, *PREPROCESSING], repo)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("e2e"))
    repro(repo)
    return repo


def test_every_stage_writes_parquet(built):
    data = built / "data"
    for split in ("train", "valid", "test"):
        n = pq.read_metadata(data / "prepared" / f"{split}.parquet").num_rows
        assert n > 0
        for stage in ("pmi", "persona_labels", "congeneric"):
            assert pq.read_metadata(data / stage / f"{split}.parquet").num_rows == n, stage
    assert pq.read_metadata(data / "groups" / "train.parquet").num_rows == pq.read_metadata(
        data / "prepared" / "train.parquet"
    ).num_rows
    assert pq.read_metadata(data / "embeddings" / "vectors.parquet").num_rows == pq.read_metadata(
        data / "prepared" / "vocab.parquet"
    ).num_rows


def test_second_repro_does_nothing(built):
    out = repro(built).stdout
    assert "Running stage" not in out, out


def test_model_param_change_reruns_no_preprocessing(built):
    # a section no preprocessing stage reads (the generators' sections come later)
    set_params(built, {"generate": {"max_len": 7}})
    out = run(["dvc", "status", *PREPROCESSING], built).stdout
    assert "changed" not in out, out
    # only the params check, which reads the whole file, reruns (in a second)
    ran = stages_run(repro(built).stdout)
    assert ran == ["check_params"], ran


def test_outputs_are_byte_identical_when_forced(built):
    before = digests(built)
    repro(built, "--force")
    assert digests(built) == before


def other_cpu_kernels() -> dict[str, str]:
    """BLAS and ATen kernels of another machine that this CPU can still run: one level below
    its own (forcing kernels above it, e.g. AVX-512 on an AVX2-only EPYC, is SIGILL)."""
    import torch

    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2"}
    return {"OPENBLAS_CORETYPE": "Sandybridge", "ATEN_CPU_CAPABILITY": "default"}


def test_outputs_are_byte_identical_across_threads_and_cpu_kernels(built):
    """Every preprocessing output, under 2 threads and with the BLAS/ATen kernels of another
    CPU generation, is byte for byte the 1-thread native run (pipeline/preprocessing/portable.py:
    without the pin, Word2Vec and the labeller's cosines change with the kernels)."""
    before = digests(built)
    other_machine = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                     **other_cpu_kernels()}
    run(["dvc", "repro", "--force", *PREPROCESSING], built, extra_env=other_machine)
    assert digests(built) == before


def test_changing_a_stage_param_reruns_only_downstream(built):
    set_params(built, {"congeneric": {"k_max": 5}})
    out = repro(built).stdout
    ran = stages_run(out)
    assert sorted(ran) == ["check_params", "congeneric"], out
    set_params(built, {"congeneric": {"k_max": 20}})
    repro(built)


def test_shared_remote_lets_a_clone_skip_preprocessing(built, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], built)
    run(["git", "add", "-A"], built)
    run(["git", "commit", "-qm", "lock and remote"], built)
    run(["dvc", "push", "--run-cache", "check_params", *PREPROCESSING], built)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
    run(["dvc", "pull", "--run-cache", "check_params", *PREPROCESSING], clone)  # models never ran here
    out = run(["dvc", "repro", *PREPROCESSING], clone).stdout
    assert "Running stage" not in out, out
    assert digests(clone) == digests(built)


def test_bad_input_fails_the_stage_with_one_clear_line(tmp_path):
    repo = make_project(tmp_path)
    corpus = tmp_path / "corpus" / "valid_self_original_no_cands.txt"
    lines = corpus.read_text().splitlines()
    lines[6] = lines[6].replace("\t", " ")  # a dialogue line without its tab
    corpus.write_text("\n".join(lines) + "\n")
    proc = run(["dvc", "repro", "prepare"], repo, check=False)
    assert proc.returncode != 0
    assert "valid_self_original_no_cands.txt:7" in proc.stderr + proc.stdout
    assert not (repo / "data" / "prepared").exists()


def test_staleness_names_the_stages_whose_code_or_params_changed(built, monkeypatch, capsys):
    from pipeline import staleness

    assert not set(staleness.stale_stages(built)) & set(PREPROCESSING)  # just reproduced
    code, params = built / "stages" / "congeneric.py", built / "params.yaml"
    saved = code.read_text(), params.read_text()
    code.write_text(saved[0] + "\n# touched\n")
    set_params(built, {"pmi": {"max_words": 3}})
    try:
        stale = staleness.stale_stages(built)
        assert any("stages/congeneric.py modified" in why for why in stale["congeneric"]), stale
        assert "param pmi modified" in stale["pmi"], stale  # the stage reads the whole section
        assert "prepare" not in stale and "embeddings" not in stale  # untouched: not stale
        monkeypatch.chdir(built)
        assert staleness.main(["--check"]) == 1
        assert "congeneric: stages/congeneric.py modified" in capsys.readouterr().out
    finally:
        code.write_text(saved[0])
        params.write_text(saved[1])


@pytest.mark.parametrize("override, message", [
    ({"seeds": []}, "seeds: expected a non-empty list of distinct items, each an integer >= 0, got []"),
    ({"seeds": [1, 1]}, "seeds: expected a non-empty list of distinct items, each an integer >= 0, got [1, 1]"),
    ({"trian": {"epochs": 1}}, "trian: unknown section, did you mean 'train'?"),
    ({"pmi": {"treshold": 0.5}}, "pmi.treshold: unknown key, did you mean 'threshold'?"),
])
def test_bad_params_stop_the_repro_before_any_stage(built, override, message):
    params = built / "params.yaml"
    saved = params.read_text()
    set_params(built, override)
    try:
        proc = run(["dvc", "repro", *PREPROCESSING], built, check=False)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: params.yaml:")]
        assert len(errors) == 1 and errors[0].endswith(f": {message}"), proc.stderr
        ran = stages_run(proc.stdout)
        assert ran == ["check_params"], proc.stdout
    finally:
        params.write_text(saved)


@pytest.mark.slow
def test_a_run_split_across_machines_resumes_from_a_remote(tmp_path):
    """A DAG longer than one machine's life: the first machine commits its partial dvc.lock and
    pushes the outputs, a trained model's checkpoints included; a fresh clone pulls them and
    goes on from there, retraining nothing. Slow (45 s): the default run's whole-DAG test
    covers the stages; this one the hand-over."""
    from tests.test_full_dag import TINY_DAG

    first = make_project(tmp_path / "first", params=TINY_DAG)
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], first)
    run(["dvc", "repro", "train@seq2seq-1"], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "partial run"], first)
    run(["dvc", "push"], first)

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "pull", "--allow-missing"], second)  # the stages never run have nothing to pull
    assert (second / "checkpoints" / "seq2seq" / "seed1" / "best.pt").exists()
    ran = stages_run(run(["dvc", "repro", "generate@seq2seq-1"], second).stdout)
    assert ran == ["generate@seq2seq-1"], ran


def lock_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


@pytest.mark.slow
def test_a_run_split_across_sessions_without_a_remote(tmp_path):
    """No remote, so no checkpoint outlives its machine: each session runs whole chains
    (training through evaluation) and commits dvc.lock with the git-tracked outputs. The next,
    in a fresh clone, reruns the preprocessing its chains read (byte-identical across machines,
    so the lock does not move), then its own chains with --allow-missing: the finished ones,
    whose checkpoints are gone, are not rerun, and a GCL chain reads the groups the first
    session selected (data/scored_groups is in git), not a new matcher's. Slow (about 2.5 min)."""
    from tests.test_full_dag import TINY_DAG

    first = make_project(tmp_path / "first", params=TINY_DAG)
    run(["dvc", "repro", "evaluate@seq2seq-1", "evaluate@seq2seq_history_gcl-1"], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "session 1: the seq2seq and seq2seq_history_gcl chains"], first)
    assert "data/scored_groups/train.parquet" in run(["git", "ls-files", "data"], first).stdout
    first_lock = lock_stages(first)

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "repro", "check_params", *PREPROCESSING], second)
    rerun = lock_stages(second)
    assert {k: rerun[k] for k in first_lock} == first_lock  # the same bytes, so the same hashes
    targets = ["evaluate@seq2seq-1", "evaluate@seq2seq_history_gcl-1", "evaluate@gpmn-1", "evaluate@hred_history_gcl-1"]
    ran = stages_run(run(["dvc", "repro", "--allow-missing", *targets], second).stdout)
    assert sorted(ran) == sorted([  # no matcher, score_groups or select_groups among them
        "train@gpmn-1", "generate@gpmn-1", "evaluate@gpmn-1", "train_history_models@hred-1",
        "reference_scores@hred_history-1", "train_gcl@hred_history-1", "generate@hred_history_gcl-1",
        "evaluate@hred_history_gcl-1"]), ran
    after = lock_stages(second)
    assert {k: after[k] for k in first_lock} == first_lock
    run(["git", "add", "-A"], second)
    run(["git", "commit", "-qm", "session 2: the gpmn and hred_history_gcl chains"], second)

    third = tmp_path / "third"
    run(["git", "clone", "-q", str(second), str(third)], tmp_path)
    dry = run(["dvc", "repro", "--allow-missing", "--dry", *targets], third)
    assert stages_run(dry.stdout) == [], dry.stdout
    for name in ("seq2seq", "seq2seq_history_gcl", "gpmn", "hred_history_gcl"):
        assert (third / "reports" / "metrics" / name / "seed1.json").exists(), name
