"""One training loop for every generator (and for the contrastive objective of issue 5).

Adam, gradient-norm clipping, ReduceLROnPlateau on validation NLL, early stopping, the
best checkpoint for generation and a resumable checkpoint for interruptions, dvclive
curves, bf16 autocast on CPU and CUDA (``precision``; fp32 on request), DistributedDataParallel
under ``torchrun`` (gloo on CPU, nccl on CUDA).

Files in ``checkpoints/<run>/``:
- ``best.pt`` — {model_name, model_params, model, step, epoch, val_nll, fingerprint}:
  what ``stages.generate`` (and GCL's frozen reference) load.
- ``last.pt`` — everything needed to continue: model, optimizer, scheduler, every rank's
  RNG states, epoch, position in the epoch, step, best value, the fingerprint and
  ``finished``. Rerunning continues from it only when its fingerprint (hash of the params
  and of the input files' bytes) matches; otherwise training starts fresh and says why.

Both hold only tensors and plain Python values: ``torch.load(path, weights_only=True)``.

Hooks: ``objective(model, batch, epoch=, step=) -> dict`` (default :func:`mle`, i.e.
``model.loss``) returns at least ``loss``; ``model`` may be DDP-wrapped, so call it as
``model(batch, method=...)``. ``epoch``/``step`` reach ``Generator.loss`` as keyword
arguments (PostKS's BOW-only warm-up epochs use ``epoch``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline import stage_times
from pipeline.dataset import (
    CONGENERIC,
    PERSONA_LABEL,
    SPECIFIC_WORDS,
    Batch,
    DialogueDataset,
    Vocab,
    batch_indices,
    load_split,
    shard,
    sorted_batches,
)
from pipeline.io import (
    InputError,
    atomic_path,
    progress,
    resolve_precision,
    save_torch,
    warn_if_emulated_bf16,
    write_json,
)
from pipeline.models import (
    Generator,
    ModelContext,
    build_model,
    get_model_class,
    perplexity,
    run_model_params,
)
from pipeline.models.layers import load_embedding_matrix
from pipeline.params_schema import validate as validate_params

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
PRECISIONS = ("auto", "bf16", "fp32")
# Validation criteria: what LR decay, early stopping and best.pt follow, as weights of
# validation metrics. "persona_nll" is the PEDNet authors' 0.7 persona CE + 0.3 NLL (models
# without a persona CE cannot use it); "cl_nll" the GCL authors' contrastive loss + 0.5 NLL
# (an objective with a validation hook, pipeline/contrastive/gcl.py, computes "cl").
CRITERIA = {"nll": {"nll": 1.0}, "persona_nll": {"persona_ce": 0.7, "nll": 0.3}, "cl_nll": {"cl": 1.0, "nll": 0.5}}
STOP_REASONS = ("early_stopping", "max_epochs", "max_steps")


def run_dirs(run: str, seed: int) -> tuple[Path, Path]:
    """checkpoints/<run>/seed<k> and dvclive/<run>/seed<k>: one directory per training seed."""
    return Path("checkpoints") / run / f"seed{seed}", Path("dvclive") / run / f"seed{seed}"


def training_record_path(run: str, seed: int) -> Path:
    """reports/training/<run>/seed<k>.json: how the run ended (collected into reports/training.json)."""
    return Path("reports") / "training" / run / f"seed{seed}.json"
Objective = Callable[..., dict]


@dataclass
class TrainConfig:
    seed: int = 1
    epochs: int = 5
    batch_size: int = 64  # per process under torchrun
    eval_batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 0  # linear LR warm-up from lr / warmup_steps to lr (the Transformer's; 0 = none)
    adam_beta2: float = 0.999  # Adam's second-moment decay (Transformers: 0.98)
    clip: float = 5.0  # max gradient norm
    lr_factor: float = 0.5  # ReduceLROnPlateau
    lr_patience: int = 1  # validations without improvement before the LR drops
    lr_floor: float = 1e-5
    validate_every: int = 0  # optimizer steps; 0 = at the end of every epoch
    early_stopping: int = 2  # validations without improvement; 0 = never stop early
    min_lr_decays: int = 1  # early stopping waits for this many LR decays (converged, not just stalled)
    select_after_lr_decays: int = 0  # best.pt only among validations with this many LR decays behind them (0: all)
    select_tolerance: float = 0.0  # a later validation within this much of the best criterion replaces best.pt
    criterion: str = "nll"  # validation criterion of LR decay, early stopping and best.pt (CRITERIA)
    checkpoint_every: int = 100  # optimizer steps between resumable checkpoints (and at validations)
    max_steps: int = 0  # 0 = no limit (tests, smoke runs)
    log_every: int = 20  # steps between train-loss points on the curves
    bucket: bool = True  # batch similar lengths together (less padding)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 (autocast: matmuls and GRUs in bf16,
    # states/losses fp32) | fp32

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        validate_params("train", params)  # unknown keys, types, ranges: params_schema's one-line errors
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(params) - known):
            raise InputError("params.yaml", f"train.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        try:
            cfg = cls(**params)
        except TypeError as e:
            raise InputError("params.yaml", f"train: {e}") from None
        cfg.check()
        return cfg

    def check(self) -> None:
        """Every value in range, one line per mistake (no traceback later in the loop)."""
        def bad(key: str, why: str):
            raise InputError("params.yaml", f"train.{key}: {why}, got {getattr(self, key)!r}")

        for key in ("seed", "epochs", "batch_size", "eval_batch_size", "lr_patience", "validate_every", "warmup_steps",
                    "early_stopping", "min_lr_decays", "select_after_lr_decays", "checkpoint_every", "max_steps",
                    "log_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(key, "must be an integer")
        for key in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        for key in ("lr_patience", "validate_every", "early_stopping", "min_lr_decays", "select_after_lr_decays",
                    "max_steps", "seed"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        for key in ("lr", "clip", "lr_factor", "lr_floor", "select_tolerance"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                bad(key, "must be a number >= 0")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if not 0 < self.lr_factor < 1:
            bad("lr_factor", "must be in (0, 1)")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {PRECISIONS}")
        if self.criterion not in CRITERIA:
            bad("criterion", f"must be one of {sorted(CRITERIA)}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "must be auto, cpu or cuda")


def train_params(all_params: dict, run: str) -> dict:
    """params.yaml `train` <- the run's own `<run>.train` overrides."""
    return {**(all_params.get("train") or {}), **((all_params.get(run) or {}).get("train") or {})}


def mle(model: nn.Module, batch: Batch, **ctx) -> dict:
    return model(batch, method="loss", **ctx)


# -- distributed / device ----------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_pref in ("auto", "cuda") and torch.cuda.is_available()
    if device_pref == "cuda" and not use_cuda:
        raise InputError("params.yaml", "train.device=cuda but CUDA is not available")
    d = Dist()
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
        return d, torch.device("cuda", d.local_rank)
    return d, torch.device("cpu")


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CPU and CUDA (CPU: AVX-512-bf16/AMX matmuls; 2.2x fp32's GEMM peak
    on the project's Xeon machines, more with AMX; a warning where the CPU has neither);
    ``fp32``: none; ``auto``: bf16 where the hardware has it (``resolve_precision``).
    The precision used goes into the stage's time record."""
    precision = resolve_precision(precision, device.type)
    stage_times.note(precision=precision)
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        if device.type == "cpu":
            warn_if_emulated_bf16()
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- fingerprint & checkpoints -----------------------------------------------------------
def input_files(data_dir: Path, inputs: frozenset[str]) -> list[Path]:
    """The files a model's training reads (their bytes enter the fingerprint)."""
    files = [data_dir / "prepared" / f for f in ("vocab.parquet", "train.parquet", "valid.parquet")]
    files.append(data_dir / "embeddings" / "vectors.parquet")
    for name, stage in ((SPECIFIC_WORDS, "pmi"), (CONGENERIC, "pmi"), (PERSONA_LABEL, "persona_labels"),
                        (CONGENERIC, "congeneric")):
        if name in inputs:
            files += [data_dir / stage / f"{s}.parquet" for s in ("train", "valid")]
    return sorted(set(files))


def fingerprint(params: dict, files: list[Path]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f.name.encode())
        if f.exists():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def save_checkpoint(obj: dict, path: Path) -> None:
    save_torch(obj, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def truncate_curves(live_dir: Path, step: int) -> None:
    """Drop curve points logged after ``step`` (by a run killed after its last checkpoint)."""
    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        col = lines[0].rstrip("\n").split("\t").index("step")
        kept = [lines[0], *(r for r in lines[1:] if int(r.split("\t")[col]) <= step)]
        if len(kept) != len(lines):
            with atomic_path(tsv) as tmp:
                tmp.write_text("".join(kept), encoding="utf-8")


def unwrap(model: nn.Module) -> Generator:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _gather_rng(d: Dist, device: torch.device) -> dict:
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)
    if d.world == 1:
        return {"cpu": [cpu], "cuda": [cuda]}
    out = [None] * d.world
    dist.all_gather_object(out, (cpu, cuda))
    return {"cpu": [c for c, _ in out], "cuda": [g for _, g in out]}


def _restore_rng(rng: dict, d: Dist, device: torch.device) -> None:
    if len(rng["cpu"]) != d.world:
        log.warning("checkpoint has RNG states of %d processes, running %d: reseeding dropout", len(rng["cpu"]), d.world)
        return
    torch.set_rng_state(rng["cpu"][d.rank])
    if device.type == "cuda" and rng["cuda"][d.rank].numel():
        torch.cuda.set_rng_state(rng["cuda"][d.rank], device)


# -- evaluation --------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: Generator, dataset: DialogueDataset, batch_size: int, device: torch.device,
             precision: str = "auto", d: Dist | None = None) -> dict[str, float]:
    """Token-level NLL/perplexity (and persona-selection accuracy and cross-entropy) on a
    split; sharded over ranks and summed."""
    d = d or Dist()
    was_training = model.training
    model.eval()
    # nll_sum, n_tokens, persona_correct, persona_total, persona_ce_sum, n_examples, posterior_correct
    sums = torch.zeros(7, dtype=torch.float64)
    batches = shard(sorted_batches(dataset.lengths(), batch_size), d.rank, d.world, equal=False)
    for index in batches:
        batch = dataset.collate(index).to(device)
        with autocast(device, precision):
            out = model.loss(batch)
        ce = float(out["persona_ce"]) * batch.size if "persona_ce" in out else math.nan
        sums += torch.tensor([float(out["nll_sum"]), float(out["n_tokens"]), float(out.get("persona_correct", 0)),
                              float(out.get("persona_total", 0)), ce, batch.size,
                              float(out.get("posterior_correct", math.nan))], dtype=torch.float64)
    if d.world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train(was_training)
    nll_sum, n_tokens, correct, total, ce_sum, n, posterior = sums.tolist()
    metrics = {"nll": nll_sum / max(n_tokens, 1), "ppl": perplexity(nll_sum, n_tokens)}
    if total > 0:
        metrics["persona_acc"] = correct / total
        if not math.isnan(posterior):  # PostKS: its posterior's selection (what the prior learns from)
            metrics["posterior_acc"] = posterior / total
    if not math.isnan(ce_sum):
        metrics["persona_ce"] = ce_sum / max(n, 1)
    return metrics


def criterion_value(metrics: dict[str, float], criterion: str, model_name: str) -> float:
    """The validation number that LR decay, early stopping and best.pt follow (lower = better)."""
    weights = CRITERIA[criterion]
    if missing := [k for k in weights if k not in metrics]:
        what = {"persona_ce": f"a persona cross-entropy, which {model_name} does not compute",
                "cl": "a validation contrastive loss, which only the GCL objective computes"}
        raise InputError("params.yaml", f"train.criterion: {criterion} needs {what.get(missing[0], missing[0])} "
                                        "(use nll)")
    return sum(w * metrics[k] for k, w in weights.items())


# -- the loop ----------------------------------------------------------------------------
@dataclass
class Progress:
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already done
    step: int = 0
    best_val: float = math.inf  # best validation criterion (what early stopping counts from)
    kept_val: float = math.inf  # the criterion of best.pt (best_val unless select_after_lr_decays / select_tolerance)
    selected_val: float = math.inf  # best criterion among validations eligible for best.pt
    best_nll: float = math.inf  # validation NLL of best.pt
    best_step: int = -1
    best_epoch: int = -1
    bad_validations: int = 0
    validated_at: int = -1
    lr_decays: int = 0
    stopped: str = ""  # STOP_REASONS
    finished: bool = False


def load_vocab_and_embeddings(data_dir: Path) -> tuple[Vocab, torch.Tensor]:
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    return vocab, load_embedding_matrix(data_dir / "embeddings" / "vectors.parquet", vocab.itos)


def _load_resume(last_path: Path, fp: str) -> dict | None:
    """last.pt if it exists, is readable and was made with these params and data."""
    if not last_path.exists():
        return None
    try:
        resume = load_checkpoint(last_path)
    except Exception as e:  # a truncated file from a killed save cannot happen (atomic), but be safe
        log.warning("cannot read %s (%s): starting fresh", last_path, e)
        return None
    if resume.get("fingerprint") != fp:
        log.warning("%s was made with other params or input data (fingerprint %s != %s): starting fresh",
                    last_path, str(resume.get("fingerprint"))[:12], fp[:12])
        return None
    return resume


@dataclass
class _Session:
    """One run's state and its bookkeeping (validation, checkpoints, curves), so that
    :func:`train`'s loop reads as a loop."""

    run: str
    model_name: str
    cfg: TrainConfig
    d: Dist
    device: torch.device
    model: Generator
    net: nn.Module  # the model, DDP-wrapped under torchrun
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    train_ds: DialogueDataset
    valid_ds: DialogueDataset
    fp: str
    ckpt_dir: Path
    live: object | None
    prog: Progress
    resumed: bool
    eval_seconds: float = 0.0  # validation time since the last throughput point

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def summary(self) -> dict:
        p = self.prog
        return {"best_val_nll": p.best_nll, "best_val_ppl": perplexity(p.best_nll, 1.0),
                "best_val_criterion": p.kept_val, "criterion": self.cfg.criterion, "best_step": p.best_step,
                "best_epoch": p.best_epoch, "steps": p.step, "epochs": p.epoch, "lr_decays": p.lr_decays,
                "final_lr": self.lr, "stopped": p.stopped, "precision": self.cfg.precision, "seed": self.cfg.seed}

    def _header(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "fingerprint": self.fp, "model_name": self.model_name, "run": self.run,
                "model_params": self.model.params, "model": self.model.state_dict()}

    def save_last(self) -> None:
        rng = _gather_rng(self.d, self.device)
        if self.d.main:
            save_checkpoint({**self._header(), "optimizer": self.optimizer.state_dict(),
                             "scheduler": self.scheduler.state_dict(), "rng": rng, "progress": asdict(self.prog),
                             "summary": self.summary()}, self.ckpt_dir / "last.pt")
        barrier(self.d)

    def validate(self) -> bool:
        """Validate, step the LR schedule, keep the best; True = converged (stop early)."""
        started = time.perf_counter()
        cfg, prog = self.cfg, self.prog
        metrics = evaluate(self.model, self.valid_ds, cfg.eval_batch_size, self.device, cfg.precision, self.d)
        if hasattr(self.objective, "validate"):  # e.g. GCL's contrastive loss on the valid groups
            metrics.update(self.objective.validate(self.model, self.device, cfg.precision))
        self.eval_seconds += time.perf_counter() - started  # kept out of the training throughput
        value = criterion_value(metrics, cfg.criterion, self.model_name)
        prog.validated_at = prog.step
        # The epoch of the last step; during a model's warm-up (PostKS: BOW only, the decoder
        # untrained) or the LR warm-up, validation neither drives the LR schedule nor counts
        # toward stopping.
        epoch = prog.epoch if prog.batch_in_epoch else prog.epoch - 1
        warm = epoch < self.model.warmup_epochs or prog.step < cfg.warmup_steps
        lr_before, decays_before = self.lr, prog.lr_decays
        if not warm:
            self.scheduler.step(value)
        prog.lr_decays += self.lr < lr_before
        improved = value < prog.best_val
        if improved:
            prog.best_val, prog.bad_validations = value, 0
        elif not warm:
            prog.bad_validations += 1
        # best.pt: the best validation of weights trained after `select_after_lr_decays` LR decays
        # (a checkpoint at the first LR can tie a converged one in NLL yet decode far more
        # generically); until one is eligible, the best so far, so that a run always has one.
        # A tie within `select_tolerance` of the best goes to the later, more trained weights.
        eligible = decays_before >= cfg.select_after_lr_decays
        tie = cfg.select_tolerance > 0 and value <= prog.best_val + cfg.select_tolerance
        keep = (value < prog.selected_val or tie) if eligible else (prog.selected_val == math.inf and improved)
        if keep:
            if eligible:
                prog.selected_val = value
            prog.kept_val, prog.best_nll, prog.best_step, prog.best_epoch = value, metrics["nll"], prog.step, epoch
            if self.d.main:
                save_checkpoint({**self._header(), "step": prog.step, "epoch": epoch, "val_nll": metrics["nll"],
                                 "val_criterion": value}, self.ckpt_dir / "best.pt")
        log.info("step %d epoch %d: val NLL %.4f ppl %.2f%s%s lr %.2g%s", prog.step, epoch, metrics["nll"],
                 metrics["ppl"], f" persona acc {metrics['persona_acc']:.3f}" if "persona_acc" in metrics else "",
                 f" {cfg.criterion} {value:.4f}" if cfg.criterion != "nll" else "",
                 self.lr, " (best)" if keep else "")
        if self.live is not None:
            self.live.step = prog.step
            for k, v in {**{f"val/{k}": v for k, v in metrics.items()}, "val/criterion": value, "lr": self.lr}.items():
                self.live.log_metric(k, v)
            for k, v in {"val_nll": prog.best_nll, "val_ppl": perplexity(prog.best_nll, 1.0),
                         "val_criterion": prog.kept_val}.items():
                self.live.log_metric(f"best/{k}", v, plot=False)
            self.live.make_summary()
        # Converged: no improvement for `early_stopping` validations, at least `min_lr_decays`
        # LR decays behind us (a plateau at the first LR is not convergence).
        return (bool(cfg.early_stopping) and prog.bad_validations >= cfg.early_stopping
                and prog.lr_decays >= cfg.min_lr_decays)


def _open_session(model_name: str, all_params: dict, run: str, data_dir: Path, ckpt_dir: Path | None,
                  live_dir: Path | None, objective: Objective, fingerprint_extra: dict | None,
                  init_from: str | Path | None, seed: int | None) -> tuple[_Session | None, dict | None, Dist]:
    """Everything before the first step: config, device, fingerprint, resume or fresh start,
    data, model, optimizer, curves. Returns (session, None, dist), or (None, its summary,
    dist) when the run already finished with these params and data."""
    tp = train_params(all_params, run)
    if seed is not None:
        tp = {**tp, "seed": seed}
    cfg = TrainConfig.from_params(tp)
    default_ckpt, default_live = run_dirs(run, cfg.seed)
    ckpt_dir, live_dir = Path(ckpt_dir or default_ckpt), Path(live_dir or default_live)
    mparams = run_model_params(all_params, run, model_name)
    cls = get_model_class(model_name)
    d, device = setup_distributed(cfg.device)
    cfg.precision = resolve_precision(cfg.precision, device.type)  # recorded as run, and in the fingerprint

    files = input_files(data_dir, cls.inputs) + ([Path(init_from)] if init_from is not None else [])
    fp = fingerprint({"train": asdict(cfg), "model": mparams, "run": run, "world": d.world,
                      "extra": fingerprint_extra or {}}, files)
    resume = _load_resume(ckpt_dir / "last.pt", fp)
    if resume is not None and resume["progress"]["finished"] and (ckpt_dir / "best.pt").exists():
        log.info("%s: training already finished with these params and data; nothing to do", ckpt_dir / "last.pt")
        return None, resume["summary"], d

    vocab, emb = load_vocab_and_embeddings(data_dir)
    data_cfg = cls.data_config(mparams)
    train_ds, valid_ds = (load_split(s, vocab, data_cfg, data_dir) for s in ("train", "valid"))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    idf_path = data_dir / "persona_idf" / "idf.tsv"  # the fetch stage's copy (GPMN's idf: table)
    model = build_model(model_name, mparams, ModelContext.from_vocab(vocab, emb, train_ds, idf_path)).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 betas=(0.9, cfg.adam_beta2))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience, min_lr=cfg.lr_floor)
    prog = Progress()
    torch.manual_seed(cfg.seed * 1000 + d.rank)  # dropout streams differ per rank
    if init_from is not None and resume is None:
        model.load_state_dict(load_checkpoint(init_from)["model"])
        log.info("%s: initialised from %s", run, init_from)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        _restore_rng(resume["rng"], d, device)
        saved = resume["progress"]
        # a last.pt from before best.pt's selection rule: its best.pt was the best so far
        prog = Progress(**{"kept_val": saved["best_val"], "selected_val": saved["best_val"], **saved})
        log.info("resuming %s from %s: epoch %d, batch %d, step %d, best val criterion %.4f",
                 run, ckpt_dir / "last.pt", prog.epoch, prog.batch_in_epoch, prog.step, prog.best_val)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: %d trainable parameters on %s (world %d), %s", run, n_params, device, d.world, cfg.precision)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # PEDNet/PostKS batches leave some parameters unused
    live = None
    if d.main:
        from dvclive import Live

        if resume is not None:
            truncate_curves(live_dir, prog.step)
        else:
            (ckpt_dir / "best.pt").unlink(missing_ok=True)  # a stale best model from other params/data
        live = Live(dir=str(live_dir), resume=resume is not None, dvcyaml=None, save_dvc_exp=False)
    return (_Session(run, model_name, cfg, d, device, model, net, objective, optimizer, scheduler, train_ds, valid_ds,
                     fp, ckpt_dir, live, prog, resume is not None), None, d)


def train(
    model_name: str,
    all_params: dict,
    *,
    run_name: str | None = None,
    data_dir: str | Path = "data",
    checkpoint_dir: str | Path | None = None,
    live_dir: str | Path | None = None,
    objective: Objective = mle,
    fingerprint_extra: dict | None = None,
    init_from: str | Path | None = None,
    seed: int | None = None,
    record_path: str | Path | None = None,
) -> dict:
    """Train ``model_name`` (architecture) as run ``run_name`` (dirs, params overrides;
    default the model name). ``seed`` overrides ``train.seed`` (the seed matrix of dvc.yaml);
    the default directories are ``run_dirs(run, seed)``. ``init_from``: a best.pt whose
    weights a fresh run starts from (GCL's target starts as its MLE reference). Writes
    ``record_path`` (default ``training_record_path``, or training.json beside checkpoints in
    a ``checkpoint_dir`` given): epochs, steps, best validation
    PPL, LR decays and why training stopped. Returns a summary dict (rank 0's view)."""
    run = run_name or model_name
    s, finished, d = _open_session(model_name, all_params, run, Path(data_dir), checkpoint_dir, live_dir, objective,
                                   fingerprint_extra, init_from, seed)
    # Outside the default layout (tests, notebooks) the record goes beside the checkpoints.
    record_path = Path(record_path or (training_record_path(run, s.cfg.seed if s else finished["seed"])
                                       if checkpoint_dir is None else Path(checkpoint_dir) / "training.json"))
    if s is None:  # finished before with these params and data
        if d.main:
            write_json(finished, record_path)
        if d.world > 1:
            dist.destroy_process_group()
        return {"resumed": True, "skipped": True, **finished}
    cfg, prog, model, live = s.cfg, s.prog, s.model, s.live

    stop = False
    running, running_n, grad_sum, tokens, t0 = 0.0, 0, 0.0, 0, time.perf_counter()
    if init_from is not None and not s.resumed:
        # A fine-tune (GCL) must earn its best.pt: its starting point is the first candidate,
        # so a run that never beats the model it started from keeps that model.
        s.validate()
    model.train()
    while prog.epoch < cfg.epochs and not stop:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + prog.epoch)  # same order on every rank
        batches = shard(batch_indices(s.train_ds.lengths(), cfg.batch_size, g, cfg.bucket), d.rank, d.world)
        bar = progress(total=len(batches), initial=prog.batch_in_epoch, desc=f"{run} epoch {prog.epoch}",
                       disable=not d.main or bool(os.environ.get("PIPELINE_NO_PROGRESS")))
        for i in range(prog.batch_in_epoch, len(batches)):
            batch = s.train_ds.collate(batches[i]).to(s.device)
            with autocast(s.device, cfg.precision):
                out = s.objective(s.net, batch, epoch=prog.epoch, step=prog.step)
            s.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip or float("inf"))
            if prog.step < cfg.warmup_steps:  # the plateau schedule takes over after it
                for group in s.optimizer.param_groups:
                    group["lr"] = cfg.lr * (prog.step + 1) / cfg.warmup_steps
            s.optimizer.step()
            prog.step, prog.batch_in_epoch = prog.step + 1, i + 1
            running, running_n = running + float(out["loss"].detach()), running_n + 1
            grad_sum += float(grad_norm)  # before clipping: spikes show on the curves
            tokens += int(out.get("target_tokens", batch.response_mask.sum()))  # GCL: every group pair
            bar.update(1)
            if prog.step % cfg.log_every == 0 and live is not None:
                live.step = prog.step
                live.log_metric("train/loss", running / running_n)
                live.log_metric("train/grad_norm", grad_sum / running_n)
                seconds = time.perf_counter() - t0 - s.eval_seconds
                live.log_metric("train/tokens_per_s", tokens * d.world / max(seconds, 1e-9))
                bar.set_postfix(loss=f"{running / running_n:.3f}")
                running, running_n, grad_sum, tokens, t0 = 0.0, 0, 0.0, 0, time.perf_counter()
                s.eval_seconds = 0.0
            validating = bool(cfg.validate_every) and prog.step % cfg.validate_every == 0
            if validating and s.validate():
                stop, prog.stopped = True, "early_stopping"
            if cfg.max_steps and prog.step >= cfg.max_steps and not stop:
                stop, prog.stopped = True, "max_steps"
            if stop or validating or prog.step % cfg.checkpoint_every == 0:
                s.save_last()
            if stop:
                break
        bar.close()
        if stop:
            break
        prog.epoch, prog.batch_in_epoch = prog.epoch + 1, 0
        if not cfg.validate_every and s.validate():
            stop, prog.stopped = True, "early_stopping"
        s.save_last()

    if prog.validated_at != prog.step or not (s.ckpt_dir / "best.pt").exists():
        if s.validate() and not prog.stopped:
            prog.stopped = "early_stopping"
    prog.stopped = prog.stopped or "max_epochs"
    if prog.stopped != "early_stopping":
        log.warning("%s stopped at %s (epoch %d, %d LR decays) before early stopping fired: it may not "
                    "have converged", run, prog.stopped, prog.epoch, prog.lr_decays)
    prog.finished = True
    s.save_last()
    if live is not None:
        live.log_metric("best/step", prog.best_step, plot=False)
        live.end()
    if d.main:
        write_json(s.summary(), record_path)
    result = {"resumed": s.resumed, "skipped": False, **s.summary()}
    log.info("%s finished: %s", run, json.dumps(result))
    if d.world > 1:
        dist.destroy_process_group()
    return result


def load_trained(path: str | Path, vocab: Vocab, device: torch.device | str = "cpu") -> Generator:
    """Rebuild a model from ``best.pt`` (no data needed: buffers like GPMN's idf are in it).

    A missing file, a file that is not a generator checkpoint, one of an unknown model or
    one that does not fit ``vocab`` (trained on other data) -> InputError, one line."""
    try:
        ck = load_checkpoint(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a checkpoint file") from None
    except Exception as e:  # torch raises many kinds for a file it cannot read
        if not zipfile.is_zipfile(path):  # what torch.save writes
            raise InputError(path, "not a PyTorch checkpoint") from None
        raise InputError(path, f"unreadable PyTorch checkpoint ({type(e).__name__}; weights_only=True allows "
                               "only tensors and plain values)") from None
    if (not isinstance(ck, dict) or not {"model_name", "model_params", "model"} <= ck.keys()
            or not isinstance(ck["model"], dict) or not isinstance(ck["model_name"], str)):
        kind = ck.get("kind") if isinstance(ck, dict) else None
        raise InputError(path, "not a generator checkpoint (no model_name / model_params / model)"
                         + (f"; it holds a {kind!r} model" if kind else ""))
    name = ck["model_name"]
    try:
        get_model_class(name)
    except KeyError:
        raise InputError(path, f"checkpoint of an unknown model {name!r}") from None
    try:
        model = build_model(name, dict(ck["model_params"]), ModelContext.from_vocab(vocab))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(path, f"incompatible {name} checkpoint: cannot rebuild the model ({e})") from None
    expected = model.state_dict()
    state = ck["model"]
    if missing := sorted(set(expected) - set(state)):
        raise InputError(path, f"incompatible {name} checkpoint: missing weights {missing[:3]}")
    if unexpected := sorted(set(state) - set(expected)):
        raise InputError(path, f"incompatible {name} checkpoint: unexpected weights {unexpected[:3]}")
    emb = "embeddings.embedding.weight"
    if emb in state and state[emb].shape[0] != len(vocab):
        raise InputError(path, f"{name} checkpoint has a vocabulary of {state[emb].shape[0]} tokens, the given "
                               f"vocabulary {len(vocab)}: it was trained on other data")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise InputError(path, f"incompatible {name} checkpoint: {k} has shape {tuple(state[k].shape)}, "
                                   f"the model expects {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.to(device).eval()
