"""The shared training loop: checkpoints, resume, determinism, schedule, stages, torchrun."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import pipeline.train as train_mod
from pipeline import schema
from pipeline.dataset import DataConfig, Vocab, load_split
from pipeline.train import load_checkpoint, load_trained, mle, train
from tests.model_inputs import tiny_params, write_model_inputs

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("inputs"))


def run(tmp: Path, data_dir: Path, params: dict, model: str = "seq2seq", **kwargs) -> dict:
    return train(model, params, data_dir=data_dir, checkpoint_dir=tmp / "ck", live_dir=tmp / "live", **kwargs)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Interrupted(Exception):
    pass


def test_resume_equals_uninterrupted_and_is_deterministic(tmp_path, data_dir, caplog):
    params = tiny_params(train={"epochs": 2, "checkpoint_every": 3})
    full = run(tmp_path / "a", data_dir, params)
    again = run(tmp_path / "b", data_dir, params)
    assert not full["resumed"] and full["steps"] == again["steps"] == 2 * 9  # 142 examples / 16
    assert_same(tensors(tmp_path / "a/ck/last.pt"), tensors(tmp_path / "b/ck/last.pt"))  # deterministic CPU

    seen = []

    def dies_at_step_14(model, batch, epoch, step):  # mid-epoch 2, two steps after the checkpoint at 12
        seen.append((epoch, step))
        if step == 14:
            raise Interrupted
        return mle(model, batch, epoch=epoch, step=step)

    with pytest.raises(Interrupted):
        run(tmp_path / "c", data_dir, params, objective=dies_at_step_14)
    assert seen[0] == (0, 0) and seen[-1] == (1, 14)
    assert load_checkpoint(tmp_path / "c/ck/last.pt")["progress"]["step"] == 12
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        resumed = run(tmp_path / "c", data_dir, params)
    assert resumed["resumed"] and "resuming seq2seq" in caplog.text
    assert resumed["steps"] == full["steps"] and resumed["best_val_nll"] == full["best_val_nll"]
    assert_same(tensors(tmp_path / "a/ck/last.pt"), tensors(tmp_path / "c/ck/last.pt"))
    assert_same(tensors(tmp_path / "a/ck/best.pt"), tensors(tmp_path / "c/ck/best.pt"))
    # the curves continue where the checkpoint was: points logged after it are dropped
    def steps(name):
        return [int(r.split("\t")[0]) for r in (tmp_path / f"c/live/plots/metrics/{name}.tsv").read_text().split("\n")[1:] if r]

    assert steps("val/nll") == [9, 18]
    assert steps("train/loss") == list(range(2, 19, 2))


def test_checkpoints_are_weights_only_and_reload(tmp_path, data_dir):
    params = tiny_params(train={"epochs": 1})
    run(tmp_path, data_dir, params, model="gpmn")
    last = torch.load(tmp_path / "ck/last.pt", weights_only=True)
    best = torch.load(tmp_path / "ck/best.pt", weights_only=True)
    assert set(last) >= {"model", "optimizer", "scheduler", "rng", "progress", "fingerprint", "model_params"}
    assert last["progress"]["finished"] and best["model_name"] == "gpmn"
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    model = load_trained(tmp_path / "ck/best.pt", vocab)
    assert model.idf.abs().sum() > 0  # GPMN's idf buffer came from the checkpoint
    ds = load_split("valid", vocab, DataConfig.from_params(model.params, type(model).inputs), data_dir)
    b = ds.collate(range(4))
    nll = model.loss(b)["nll_sum"] / model.loss(b)["n_tokens"]
    assert torch.isfinite(nll)
    metrics = json.loads((tmp_path / "live/metrics.json").read_text())
    assert metrics["best"]["val_nll"] == pytest.approx(best["val_nll"])
    assert (tmp_path / "live/plots/metrics/train/loss.tsv").exists()


def test_changed_params_start_fresh_and_finished_run_is_skipped(tmp_path, data_dir, caplog):
    params = tiny_params(train={"epochs": 1})
    run(tmp_path, data_dir, params)
    assert run(tmp_path, data_dir, params)["skipped"]
    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        out = run(tmp_path, data_dir, tiny_params(train={"epochs": 1, "lr": 0.002}))
    assert not out["resumed"] and "starting fresh" in caplog.text


def test_schedule_early_stopping_and_best(tmp_path, data_dir, monkeypatch):
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"nll": next(vals), "ppl": 1.0})
    params = tiny_params(train={"epochs": 10, "validate_every": 2, "early_stopping": 3, "lr_patience": 0,
                                "lr": 0.004})
    out = run(tmp_path, data_dir, params)
    assert out["steps"] == 10 and out["best_val_nll"] == 2.0  # stopped after 3 bad validations
    assert load_checkpoint(tmp_path / "ck/best.pt")["step"] == 4
    lr = load_checkpoint(tmp_path / "ck/last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.004 * 0.5**3)


def test_best_checkpoint_only_after_an_lr_decay_when_asked(tmp_path, data_dir, monkeypatch):
    """The lowest NLL comes at the first LR (step 4); with select_after_lr_decays 1, best.pt is
    the best validation of weights trained after the first decay: step 8, not step 6, whose
    validation triggered the decay (its weights saw only the first LR) though its NLL is lower.
    Early stopping still counts from 2.0."""
    params = tiny_params(train={"epochs": 10, "validate_every": 2, "early_stopping": 3, "lr_patience": 0,
                                "lr": 0.004, "select_after_lr_decays": 1})
    vals = iter([3.0, 2.0, 2.05, 2.1, 2.7, 2.8])  # the LR halves after the validation of 2.05 (step 6)
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"nll": next(vals), "ppl": 1.0})
    out = run(tmp_path, data_dir, params)
    assert out["steps"] == 10  # three validations without beating 2.0: the same stop as without the rule
    assert load_checkpoint(tmp_path / "ck/best.pt")["step"] == 8 and out["best_val_nll"] == 2.1
    assert out["best_step"] == 8 and out["best_val_criterion"] == 2.1
    # never an LR decay: best.pt is still the best validation, so a run always has one
    vals2 = iter([3.0, 2.0])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"nll": next(vals2), "ppl": 1.0})
    out = run(tmp_path / "b", data_dir, tiny_params(train={"epochs": 2, "validate_every": 0,
                                                           "select_after_lr_decays": 1}))
    assert out["best_val_nll"] == 2.0 and load_checkpoint(tmp_path / "b/ck/best.pt")["val_nll"] == 2.0


def test_a_later_validation_within_the_tolerance_takes_best_pt(tmp_path, data_dir, monkeypatch):
    """select_tolerance 0.01: 2.005 (step 8) ties the best 2.0 (step 4) and replaces it; 2.3 does
    not; 1.99 (step 10) is a new best. Early stopping still counts from the strict best."""
    params = tiny_params(train={"epochs": 10, "validate_every": 2, "early_stopping": 3, "lr_patience": 0,
                                "lr": 0.004, "select_tolerance": 0.01})
    vals = iter([3.0, 2.0, 2.3, 2.005, 1.99, 2.5, 2.6, 2.7])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"nll": next(vals), "ppl": 1.0})
    seen = []
    save = train_mod.save_checkpoint
    monkeypatch.setattr(train_mod, "save_checkpoint",
                        lambda obj, path: (seen.append(obj["step"]) if Path(path).name == "best.pt" else None,
                                           save(obj, path))[1])
    out = run(tmp_path, data_dir, params)
    assert seen == [2, 4, 8, 10] and out["steps"] == 16  # three bad validations after 1.99
    assert out["best_step"] == 10 and out["best_val_nll"] == 1.99
    # 0 (the papers, and the fine-tunes): the strict minimum
    vals = iter([3.0, 2.0, 2.3, 2.005, 2.3])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"nll": next(vals), "ppl": 1.0})
    out = run(tmp_path / "b", data_dir, tiny_params(train={"epochs": 10, "validate_every": 2, "early_stopping": 3,
                                                           "lr_patience": 0, "lr": 0.004}))
    assert out["best_step"] == 4 and out["best_val_nll"] == 2.0
    from pipeline.io import InputError

    with pytest.raises(InputError, match="select_tolerance"):
        run(tmp_path / "c", data_dir, tiny_params(train={"select_tolerance": -0.1}))


def test_unknown_train_param(tmp_path, data_dir):
    from pipeline.io import InputError

    with pytest.raises(InputError, match="train.epochz: unknown key"):
        run(tmp_path, data_dir, tiny_params(train={"epochz": 1}))


def _stage_dir(tmp_path: Path, data_dir: Path, **sections) -> Path:
    shutil.copytree(data_dir, tmp_path / "data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(**sections)))
    return tmp_path


def _run_stage(cwd: Path, *args: str, launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_train_and_generate_stages(tmp_path, data_dir, monkeypatch):
    cwd = _stage_dir(tmp_path, data_dir, train={"epochs": 1})
    monkeypatch.chdir(cwd)
    from pipeline.io import InputError
    from stages.generate import main as generate_main

    with pytest.raises(InputError, match="best.pt"):
        generate_main(["seq2seq"])
    res = _run_stage(cwd, "stages.train", "seq2seq", "--seed", "2")
    assert res.returncode == 0, res.stderr
    record = json.loads((cwd / "reports/training/seq2seq/seed2.json").read_text())
    assert record["seed"] == 2 and record["stopped"] == "max_epochs" and record["epochs"] == 1
    res = _run_stage(cwd, "stages.generate", "seq2seq", "--seed", "2")
    assert res.returncode == 0, res.stderr
    table = pq.read_table(cwd / "reports/generations/seq2seq/seed2.parquet")
    assert table.schema.equals(schema.GENERATIONS)
    test = pq.read_table(cwd / "data/prepared/test.parquet")
    assert table.column("example_id").to_pylist() == test.column("example_id").to_pylist()
    assert table.column("context").to_pylist() == test.column("query").to_pylist()
    # decode-time params: a diagnostic written under its own name; an unknown key is one line
    res = _run_stage(cwd, "stages.generate", "seq2seq", "--seed", "2", "--set", "dropout=0.5", "--as", "probe")
    assert res.returncode == 0, res.stderr
    assert (cwd / "reports/generations/probe/seed2.parquet").exists()
    res = _run_stage(cwd, "stages.generate", "seq2seq", "--seed", "2", "--set", "nope=1", "--as", "probe")
    assert res.returncode != 0 and "--set nope: not a param" in res.stderr and "Traceback" not in res.stderr
    res = _run_stage(cwd, "stages.generate", "seq2seq", "--seed", "2", "--set", "dropout=2", "--as", "probe")
    assert res.returncode != 0 and "--set dropout=2" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, data_dir):
    cwd = _stage_dir(tmp_path, data_dir, train={"epochs": 2})
    torchrun = (str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m")
    res = _run_stage(cwd, "stages.train", "gpmn", launcher=torchrun)
    assert res.returncode == 0, res.stderr[-3000:]
    last = load_checkpoint(cwd / "checkpoints/gpmn/seed1/last.pt")
    assert last["progress"]["step"] == 2 * (9 // 2)  # each rank takes half the batches, equal counts
    assert len(last["rng"]["cpu"]) == 2  # both ranks' dropout streams, for an exact resume
    assert (cwd / "dvclive/gpmn/seed1/metrics.json").exists()
    # resuming under torchrun after the stage was finished: nothing to do
    res = _run_stage(cwd, "stages.train", "gpmn", launcher=torchrun)
    assert res.returncode == 0 and "nothing to do" in res.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training(tmp_path, data_dir):
    out = run(tmp_path, data_dir, tiny_params(train={"epochs": 1, "device": "cuda", "precision": "bf16"}))
    assert out["steps"] == 9 and out["best_val_nll"] < 10


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted(tmp_path, data_dir):
    import signal
    import time

    sections = {"train": {"epochs": 12, "checkpoint_every": 5}}
    reference = run(tmp_path / "ref", data_dir, tiny_params(**sections))
    cwd = _stage_dir(tmp_path / "stage", data_dir, **sections)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "seq2seq"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = cwd / "checkpoints/seq2seq/last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere mid-run, between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["progress"]
    assert not killed_at["finished"], "the run ended before the kill: make it longer"
    res = _run_stage(cwd, "stages.train", "seq2seq")
    assert res.returncode == 0 and "resuming seq2seq" in res.stderr
    assert load_checkpoint(last)["progress"]["step"] == reference["steps"]
    assert_same(tensors(tmp_path / "ref/ck/last.pt"), tensors(last))
    assert_same(tensors(tmp_path / "ref/ck/best.pt"), tensors(cwd / "checkpoints/seq2seq/best.pt"))


# -- convergence: early stopping after an LR decay, the training record ------------------
def scripted_validation(monkeypatch, nlls: list[float]):
    """Replace the validation pass by a scripted sequence of NLLs (one per validation)."""
    values = iter(nlls)

    def fake(*args, **kwargs):
        nll = next(values)
        return {"nll": nll, "ppl": float(torch.tensor(nll).exp())}

    monkeypatch.setattr(train_mod, "evaluate", fake)


@pytest.mark.parametrize(("lr_patience", "epochs", "decays"), [(0, 4, 2), (2, 5, 1)])
def test_early_stopping_waits_for_an_lr_decay(tmp_path, data_dir, monkeypatch, lr_patience, epochs, decays):
    # epoch 0: 5.0, epoch 1: 4.0 (best), then worse and worse.
    scripted_validation(monkeypatch, [5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9, 5.0, 5.1, 5.2])
    params = tiny_params(train={"epochs": 10, "early_stopping": 2, "lr_patience": lr_patience, "min_lr_decays": 1})
    out = run(tmp_path, data_dir, params)
    # patience 0: the first bad epoch halves the LR, the second stops. Patience 2: two bad
    # epochs are not enough without a decay; the third decays and stops.
    assert out["stopped"] == "early_stopping"
    assert out["epochs"] == epochs and out["lr_decays"] == decays
    assert out["best_epoch"] == 1 and out["best_val_nll"] == 4.0
    assert out["final_lr"] == pytest.approx(0.003 * 0.5**decays)
    record = json.loads((tmp_path / "ck" / "training.json").read_text())
    assert {k: out[k] for k in record} == record  # the record is the run's summary
    assert {k: record[k] for k in ("stopped", "epochs", "lr_decays", "best_val_ppl", "steps")} == {
        "stopped": "early_stopping", "epochs": epochs, "lr_decays": decays,
        "best_val_ppl": pytest.approx(float(torch.tensor(4.0).exp())), "steps": epochs * 9}


def test_lr_warm_up_then_the_plateau_schedule(tmp_path, data_dir, monkeypatch):
    """Linear warm-up over `warmup_steps` (9 steps per epoch here): validations inside it
    neither decay the LR nor count toward stopping; after it the plateau schedule acts."""
    scripted_validation(monkeypatch, [5.0, 6.0, 7.0, 8.0, 9.0])
    seen = []
    params = tiny_params(train={"epochs": 5, "warmup_steps": 12, "lr_patience": 0, "early_stopping": 1,
                                "adam_beta2": 0.98})
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        assert self.param_groups[0]["betas"] == (0.9, 0.98)
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    out = run(tmp_path, data_dir, params)
    lr = 0.003
    assert seen[:12] == pytest.approx([lr * (s + 1) / 12 for s in range(12)])
    # the validation at step 9 falls inside the warm-up (it is still the best so far); the plateau
    # schedule starts from the one at step 18 (worse, but its first), decays the LR at step 27
    # (worse again) and, with that decay behind it, early stopping (1) ends the run there
    assert seen[12:27] == pytest.approx([lr] * 15)
    assert out["lr_decays"] == 1 and out["stopped"] == "early_stopping" and out["steps"] == 27
    assert out["best_val_nll"] == 5.0
    grad = (tmp_path / "live/plots/metrics/train/grad_norm.tsv").read_text().split("\n")[1:]
    assert all(float(r.split("\t")[1]) > 0 for r in grad if r)


def test_a_capped_run_says_so(tmp_path, data_dir, monkeypatch, caplog):
    scripted_validation(monkeypatch, [5.0, 4.0, 3.0])
    out = run(tmp_path, data_dir, tiny_params(train={"epochs": 3, "early_stopping": 2}))
    assert out["stopped"] == "max_epochs" and out["lr_decays"] == 0
    assert "may not have converged" in caplog.text


def test_persona_criterion(tmp_path, data_dir):
    from pipeline.io import InputError

    with pytest.raises(InputError, match="persona_nll needs a persona cross-entropy"):
        run(tmp_path / "s", data_dir, tiny_params(train={"epochs": 1, "criterion": "persona_nll"}))
    params = tiny_params(train={"epochs": 1, "criterion": "persona_nll"}, pednet={"k": 2})
    out = run(tmp_path / "p", data_dir, params, model="pednet")
    assert out["criterion"] == "persona_nll"
    best = load_checkpoint(tmp_path / "p/ck/best.pt")
    assert best["val_criterion"] != pytest.approx(best["val_nll"])  # 0.7 CE + 0.3 NLL, not NLL


@pytest.mark.parametrize(("key", "value", "message"), [
    ("batch_size", 0, "train.batch_size: expected an integer >= 1, got 0"),
    ("epochs", -1, "train.epochs: expected an integer >= 1, got -1"),
    ("lr", -1, "train.lr: expected a number > 0, got -1"),
    ("lr", "abc", "train.lr: expected a number > 0, got 'abc'"),
    ("lr_factor", 1.5, "train.lr_factor: expected a number in (0, 1), got 1.5"),
    ("precision", "fp16", "train.precision: expected one of auto, bf16, fp32, got 'fp16'"),
    ("criterion", "bleu", "train.criterion: expected one of nll, persona_nll, cl_nll, got 'bleu'"),
    ("device", "tpu", "train.device: expected one of auto, cpu, cuda, got 'tpu'"),
    ("early_stopping", 1.5, "train.early_stopping: expected an integer >= 0, got 1.5"),
])
def test_bad_train_params_are_one_line_errors(key, value, message):
    from pipeline.io import InputError
    from pipeline.train import TrainConfig

    with pytest.raises(InputError, match=re.escape(message)):
        TrainConfig.from_params({**tiny_params()["train"], key: value})


# -- precision ---------------------------------------------------------------------------
def test_bf16_and_fp32_paths(tmp_path, data_dir):
    """Both precisions train the same model from the same start to nearly the same loss;
    bf16 really runs the recurrent layers in bf16 (their outputs differ a little)."""
    from pipeline.models.layers import Encoder, EncoderConfig

    runs = {p: run(tmp_path / p, data_dir, tiny_params(train={"epochs": 2, "precision": p})) for p in ("fp32", "bf16")}
    assert runs["bf16"]["precision"] == "bf16" and runs["fp32"]["precision"] == "fp32"
    assert runs["bf16"]["best_val_nll"] == pytest.approx(runs["fp32"]["best_val_nll"], rel=0.02)

    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(8, 16))
    x, mask = torch.randn(4, 7, 8), torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out32, h32 = enc(x, mask)
    with train_mod.autocast(torch.device("cpu"), "bf16"):
        out16, h16 = enc(x, mask)
    assert h16.dtype == torch.float32  # states stay fp32
    assert 0 < (h16 - h32).abs().max() < 0.05  # computed in bf16: close, not identical
    out16.float().sum().backward()
    assert enc.gru.weight_hh_l0.grad is not None and enc.gru.weight_hh_l0.grad.dtype == torch.float32
    assert torch.all(out16[1, 5:] == 0)  # padding stays out of the state in bf16 too


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns_once(native, monkeypatch, caplog):
    import logging

    from pipeline import io

    monkeypatch.setattr(io, "native_cpu_bf16", lambda: native)
    io._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        for _ in range(2):
            with train_mod.autocast(torch.device("cpu"), "bf16"):
                pass
        with train_mod.autocast(torch.device("cpu"), "fp32"):
            pass
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)
    io._warn_emulated_bf16.cache_clear()


def test_checkpoints_are_byte_identical_for_identical_contents(tmp_path):
    # torch.save names its archive after the file it is given; save_torch writes through a
    # temporary file, so without care every save of the same weights had different bytes
    from pipeline.io import save_torch

    obj = {"model": torch.nn.Linear(3, 2).state_dict(), "step": 7}
    save_torch(obj, tmp_path / "a" / "best.pt")
    save_torch(obj, tmp_path / "b" / "last.pt")
    assert (tmp_path / "a" / "best.pt").read_bytes() == (tmp_path / "b" / "last.pt").read_bytes()
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=True)["step"] == 7
