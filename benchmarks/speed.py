"""Before/after measures of the speed work, each side by side in one run on the real slice.

- ``scoring``: the reference-score stage's pass over group pairs: today's path (every pair
  encoded with its context, in the CPU's bf16) against ours (each distinct context encoded
  once, ``precision: auto``), and the two factors apart.
- ``decoding``: the generate stage (batched greedy with incremental state, and the
  query_gain pass) in bf16 against ``precision: auto``.
- ``gcl_validation``: one validation of a GCL fine-tune on every valid group against the
  seeded subset of ``gcl.valid_examples``, and the paired CI of a criterion difference.
- ``readout``: MLE training steps with the output layer on every response position against
  on the real tokens only.
- ``threads``: MLE training steps in one process with 2 threads against two processes with
  one thread each, side by side (what ``dvc queue start -j 2`` would do).

Each returns (headline, details). The model is seed 1 of the run when it is trained
(``checkpoints/<run>/seed1/best.pt``), else the same architecture untrained: the cost of a
pass does not depend on the weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.io import load_params, native_cpu_bf16, read_parquet, resolve_precision

DATA = Path("data")


def _model(run: str):
    from pipeline.dataset import Vocab, load_split
    from pipeline.models import ModelContext, build_model, run_architecture, run_model_params
    from pipeline.train import load_trained, load_vocab_and_embeddings

    best = Path("checkpoints") / run / "seed1" / "best.pt"
    if best.exists():
        vocab = Vocab.load(DATA / "prepared" / "vocab.parquet")
        model = load_trained(best, vocab)
        trained = True
    else:
        params = load_params()
        arch = run_architecture(params, run)
        mparams = run_model_params(params, run, arch)
        vocab, emb = load_vocab_and_embeddings(DATA)
        torch.manual_seed(1)
        model = build_model(arch, mparams, ModelContext.from_vocab(vocab, emb))
        trained = False
    data_cfg = type(model).data_config(model.params)
    return model.eval(), vocab, (lambda split: load_split(split, vocab, data_cfg, DATA)), trained


def _groups(split: str, n_rows: int, k: int = 3, seed: int = 0):
    """The first ``n_rows`` rows of data/scored_groups/<split>, or groups of the same shape
    (the original pair, 2k positives, 2k negatives per example) drawn at random."""
    import pyarrow as pa

    path = DATA / "scored_groups" / f"{split}.parquet"
    if path.exists():
        return read_parquet(path).slice(0, n_rows), True
    rng = np.random.default_rng(seed)
    ctx_pos, resp_pos, ctx_neg, resp_neg = [], [], [], []
    for row in range(n_rows):
        other = rng.integers(0, n_rows, size=(4, 2 * k))
        ctx_pos.append([row, *[row] * k, *other[0, :k]])  # original, response side, context side
        resp_pos.append([row, *other[1, :k], *[row] * k])
        ctx_neg.append([*[row] * k, *other[2, :k]])
        resp_neg.append([*other[3, :k], *[row] * k])
    return pa.table({"positive_context_rows": ctx_pos, "positive_response_rows": resp_pos,
                     "negative_context_rows": ctx_neg, "negative_response_rows": resp_neg}), False


def _pairs(groups) -> tuple[list[int], list[int]]:
    cols = groups.to_pydict()
    ctx, resp = [], []
    for kind in ("positive", "negative"):
        for cs, rs in zip(cols[f"{kind}_context_rows"], cols[f"{kind}_response_rows"], strict=True):
            ctx += cs
            resp += rs
    return ctx, resp


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def scoring(examples: int = 300, run: str = "seq2seq_history", repeats: int = 2) -> tuple[dict, dict]:
    """reference_scores' pass over the group pairs of ``examples`` training examples."""
    from pipeline.contrastive.gcl import SCORE_BLOCK, score_pairs
    from pipeline.train import autocast

    model, _, split, trained = _model(run)
    ds = split("train")
    groups, real = _groups("train", min(examples, len(ds)))
    ctx, resp = _pairs(groups)
    batch = load_params("reference_scores")["batch_size"]
    cpu = torch.device("cpu")
    auto = resolve_precision("auto", "cpu")
    variants = {  # name: (precision, share contexts)
        "before_bf16_per_pair": ("bf16", False),
        "bf16_shared": ("bf16", True),
        f"{auto}_per_pair": (auto, False),
        f"after_{auto}_shared": (auto, True),
    }
    seconds, values = {}, {}
    for name, (precision, share) in variants.items():
        def go(precision=precision, share=share, name=name):
            with torch.inference_mode(), autocast(cpu, precision):
                values[name] = score_pairs(model, ds, ctx, resp, cpu, chunk=batch, block=SCORE_BLOCK, share=share)
        seconds[name] = _best_of(go, repeats)
    before, after = seconds["before_bf16_per_pair"], seconds[f"after_{auto}_shared"]
    same = float((values[f"after_{auto}_shared"] - values[f"{auto}_per_pair"]).abs().max())
    return (
        {"reference_scores_speedup": round(before / after, 2)},
        {"run": run, "trained": trained, "real_groups": real, "examples": len(groups), "pairs": len(ctx),
         "distinct_contexts": len(set(ctx)), "batch_size": batch, "auto_precision": auto,
         "seconds": {k: round(v, 2) for k, v in seconds.items()},
         "pairs_per_s": {k: round(len(ctx) / v, 1) for k, v in seconds.items()},
         "max_abs_diff_shared_vs_per_pair_nats": round(same, 6)},
    )


def decoding(turns: int = 1000, run: str = "seq2seq_history", repeats: int = 1) -> tuple[dict, dict]:
    """The generate stage's work on ``turns`` test turns: greedy decoding (incremental
    state) and the query_gain pass. Before: bf16 (the old default) and batches in dataset
    order; after: ``precision: auto`` and length-sorted batches; and each change alone."""
    from pipeline import decode
    from pipeline.dataset import DialogueDataset, batch_indices
    from pipeline.train import autocast

    model, _, split, trained = _model(run)
    full = split("test")
    ds = DialogueDataset(full.examples[:turns], {k: v[:turns] for k, v in full.texts.items()}, full.vocab, full.config)
    p = load_params("generate")
    cpu = torch.device("cpu")
    auto = resolve_precision("auto", "cpu")
    variants = {"before_bf16_in_order": ("bf16", False), f"{auto}_in_order": (auto, False),
                "bf16_sorted": ("bf16", True), f"after_{auto}_sorted": (auto, True)}
    seconds, hyps = {}, {}
    sorted_batches = decode.sorted_batches
    try:
        for name, (precision, by_length) in variants.items():
            decode.sorted_batches = sorted_batches if by_length else (lambda lengths, bs: batch_indices(lengths, bs))

            def go(precision=precision, name=name):
                with autocast(cpu, precision):
                    rows = decode.generate_rows(model, ds, method=p["method"], beam_size=p["beam_size"],
                                                max_len=p["max_len"], batch_size=p["batch_size"], device=cpu)
                    decode.query_log_probs(model, ds, batch_size=p["batch_size"], device=cpu,
                                           partner=decode.derangement(len(ds)))
                hyps[name] = [r["hypothesis"] for r in rows]
            seconds[name] = _best_of(go, repeats)
    finally:
        decode.sorted_batches = sorted_batches
    before, after = "before_bf16_in_order", f"after_{auto}_sorted"
    same = float(np.mean([a == b for a, b in zip(hyps[before], hyps[after], strict=True)]))
    same_order = float(np.mean([a == b for a, b in zip(hyps[f"{auto}_in_order"], hyps[after], strict=True)]))
    return (
        {"generate_speedup": round(seconds[before] / seconds[after], 2)},
        {"run": run, "trained": trained, "turns": len(ds), "auto_precision": auto, "batch_size": p["batch_size"],
         "seconds": {k: round(v, 2) for k, v in seconds.items()},
         "identical_hypotheses_before_vs_after": round(same, 4),
         "identical_hypotheses_sorted_vs_in_order": round(same_order, 4)},
    )


def gcl_validation(run: str = "seq2seq_history") -> tuple[dict, dict]:
    """One validation CL of the GCL objective: every valid group against the seeded subset
    of ``gcl.valid_examples`` (needs data/scored_groups and the reference scores of seed 1).

    Sizing: validation picks between checkpoints of one run by the difference of their
    criteria on the same examples, so what matters is the sd of the per-example difference
    of CL between two checkpoints (the reference and the GCL run's last step, when trained):
    its standard error at the subset size is compared with the differences selected between."""
    from pipeline.contrastive.gcl import GCLConfig, GroupContrastive
    from pipeline.train import load_trained

    params = load_params()
    gcl = {**params["gcl"], **((params.get(f"{run}_gcl") or {}).get("gcl") or {})}
    model, vocab, split, trained = _model(run)
    train_ds, valid_ds = split("train"), split("valid")
    ref = DATA / "reference_scores" / run / "seed1"
    groups = {s: read_parquet(DATA / "scored_groups" / f"{s}.parquet") for s in ("train", "valid")}
    scores = {s: read_parquet(ref / f"{s}.parquet") for s in ("train", "valid")}
    out, seconds, objs = {}, {}, {}
    for name, size in (("all", 0), ("subset", gcl.get("valid_examples", 0))):
        cfg = GCLConfig.from_params({**gcl, "valid_examples": size})
        objs[name] = GroupContrastive(cfg, groups["train"], scores["train"], train_ds,
                                      valid=(groups["valid"], scores["valid"], valid_ds))
        start = time.perf_counter()
        out[name] = objs[name].validate(model, "cpu")
        seconds[name] = time.perf_counter() - start
    n_valid = groups["valid"].num_rows
    size = gcl.get("valid_examples", 0) or n_valid
    details = {"run": run, "trained": trained, "valid_examples": n_valid, "subset": size,
               "seconds": {k: round(v, 2) for k, v in seconds.items()},
               "cl": {k: round(v["cl"], 4) for k, v in out.items()}}
    last = Path("checkpoints") / f"{run}_gcl" / "seed1" / "last.pt"
    if last.exists():  # the paired sizing
        tuned = load_trained(last, vocab)
        a = np.array([cl for _, cl, _, _ in _per_example(objs["all"], model)])
        b = np.array([cl for _, cl, _, _ in _per_example(objs["all"], tuned)])
        sd = float(np.std(b - a, ddof=1))
        details["sizing"] = {"checkpoints": ["reference", str(last)], "cl_difference_all": round(float(b.mean() - a.mean()), 4),
                             "per_example_difference_sd": round(sd, 4),
                             "se_of_difference": {n: round(sd / np.sqrt(n), 4) for n in (250, 500, 1000, 2000, n_valid)}}
    return {"gcl_validation_speedup": round(seconds["all"] / seconds["subset"], 2)}, details


def _per_example(obj, model):
    """(1, CL of one valid example, pairs, D) per valid example: valid batches of one."""
    keep = obj.valid_batch
    obj.valid_batch = 1
    try:
        yield from obj.valid_pairs(model, "cpu")
    finally:
        obj.valid_batch = keep


def _side_by_side(run: str, steps: int, rounds: int, sides: dict) -> tuple[dict, list, object]:
    """Seconds per MLE training step (``precision: auto``) of each side, ``sides`` {name:
    switch} (the switch puts that side in place): the same batches and starting weights,
    blocks alternating ``rounds`` times, each figure the best block. Returns (seconds, batches,
    the training config)."""
    import copy

    from benchmarks.measures import _timed_steps, _training_setup

    model, _, ds, batches, cfg = _training_setup(run, steps, resolve_precision("auto", "cpu"))
    model.train()
    start_state = copy.deepcopy(model.state_dict())
    batches = [ds.collate(i) for i in batches]
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(rounds):
        for name, switch in sides.items():
            switch()
            model.load_state_dict(start_state)
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
            seconds, _ = _timed_steps(model, optimizer, batches, cfg)
            best[name] = min(best[name], seconds / (len(batches) - 1))
    return best, batches, cfg


def encoder(runs=("seq2seq_history", "hred_history", "pednet", "seq2seq"), steps: int = 6,
            rounds: int = 2) -> tuple[dict, dict]:
    """MLE training steps (forward, backward, clip, Adam; ``precision: auto``) with the
    encoder's bidirectional GRU always packed (before) and as the Encoder chooses now (after:
    padded from ``layers.PADDED_GRU_FROM`` tokens): the same batches and starting weights,
    blocks alternating, each figure the best block."""
    from pipeline.models import layers

    chosen = layers.PADDED_GRU_FROM
    details = {}
    for run in runs:
        try:
            best, _, cfg = _side_by_side(run, steps, rounds, {
                "packed": lambda: setattr(layers, "PADDED_GRU_FROM", 10**9),
                "padded": lambda: setattr(layers, "PADDED_GRU_FROM", chosen)})
        finally:
            layers.PADDED_GRU_FROM = chosen
        details[run] = {"seconds_per_step": {k: round(v, 3) for k, v in best.items()},
                        "speedup": round(best["packed"] / best["padded"], 2), "batch_size": cfg.batch_size}
    return {"encoder_step_speedup_history": details[runs[0]]["speedup"]}, {"precision": resolve_precision("auto", "cpu"),
                                                                           "steps": steps, "runs": details}


def _full_readout_nll(self, batch, state=None):
    """token_nll before: the readout on every [B, T] position, padding masked after."""
    import torch.nn.functional as F

    logits = self.teacher_forced_logits(batch, state)
    b, t, v = logits.shape
    nll = F.cross_entropy(logits.float().reshape(b * t, v), batch.response.reshape(-1), reduction="none")
    return nll.view(b, t) * batch.response_mask


def readout(runs=("seq2seq_history", "transformer_history", "seq2seq"), steps: int = 6,
            rounds: int = 2) -> tuple[dict, dict]:
    """MLE training steps (``precision: auto``) with the readout and softmax on every
    response position (before) and on the real tokens only (after, ``Generator.token_nll``):
    the same batches and starting weights, blocks alternating, each figure the best block."""
    from pipeline.models import Generator

    ours = Generator.token_nll
    details = {}
    for run in runs:
        try:
            best, batches, cfg = _side_by_side(run, steps, rounds, {
                "all_positions": lambda: setattr(Generator, "token_nll", _full_readout_nll),
                "real_tokens": lambda: setattr(Generator, "token_nll", ours)})
        finally:
            Generator.token_nll = ours
        padding = float(sum((~b.response_mask).sum() for b in batches) / sum(b.response_mask.numel() for b in batches))
        details[run] = {"seconds_per_step": {k: round(v, 3) for k, v in best.items()},
                        "speedup": round(best["all_positions"] / best["real_tokens"], 2),
                        "response_padding_share": round(padding, 3), "batch_size": cfg.batch_size}
    return {"readout_step_speedup_history": details[runs[0]]["speedup"]}, {"precision": resolve_precision("auto", "cpu"),
                                                                           "steps": steps, "runs": details}


# -- thread layout ------------------------------------------------------------------------
def _train_steps(run: str, steps: int, threads: int) -> float:
    """Seconds of ``steps`` MLE training steps of ``run`` with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    from benchmarks.measures import _timed_steps, _training_setup

    model, optimizer, ds, batches, cfg = _training_setup(run, steps, resolve_precision("auto", "cpu"))
    model.train()
    return _timed_steps(model, optimizer, (ds.collate(i) for i in batches), cfg)[0]


def threads(run: str = "seq2seq_history", steps: int = 20) -> tuple[dict, dict]:
    """Two jobs of ``steps`` training steps each: one after the other in one process with 2
    threads, against side by side in two processes with 1 thread each (as two stages under
    ``dvc queue start -j 2``). Wall seconds of the pair of jobs."""
    def spawn(n_threads: int) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS=str(n_threads), PIPELINE_NO_PROGRESS="1")
        code = (f"from benchmarks.speed import _train_steps; print(_train_steps({run!r}, {steps}, {n_threads}))")
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)

    start = time.perf_counter()
    for _ in range(2):
        p = spawn(2)
        p.wait()
    one = time.perf_counter() - start
    start = time.perf_counter()
    procs = [spawn(1), spawn(1)]
    for p in procs:
        p.wait()
    two = time.perf_counter() - start
    return (
        {"two_processes_vs_one_speedup": round(one / two, 2)},
        {"run": run, "steps_per_job": steps, "one_process_2_threads_seconds": round(one, 1),
         "two_processes_1_thread_seconds": round(two, 1), "native_bf16": native_cpu_bf16()},
    )


if __name__ == "__main__":
    print(json.dumps(dict(zip(("headline", "details"), globals()[sys.argv[1]](), strict=True)), indent=1))


def mmi_sampling(rows: int = 64, n: int = 50, run: str = "seq2seq_history") -> tuple[dict, dict]:
    """MMI-bidi's sampled N-best (``mmi.nbest: sample``) for ``rows`` valid contexts, ``n`` samples
    each. Before: every context copied n times and encoded n times, ``torch.multinomial`` draws,
    a teacher-forced pass to score the samples; after: ``sampled_nbest`` (encoded once, state
    repeated; inverse-CDF draws; log-probs summed while sampling)."""
    from pipeline.learners import rl
    from pipeline.learners.mmi import sampled_nbest

    model, _, split, trained = _model(run)
    batch = split("valid").collate(list(range(rows)))
    max_len = load_params("generate")["max_len"]

    def before():
        g = torch.Generator().manual_seed(1)
        repeated = batch.select(torch.arange(batch.size).repeat_interleave(n))
        categorical = rl.sample_categorical
        rl.sample_categorical = lambda probs, gen: torch.multinomial(probs, 1, generator=gen).squeeze(1)
        try:
            replies = rl.sample_replies(model, repeated, max_len, generator=g)
        finally:
            rl.sample_categorical = categorical
        with torch.no_grad():
            model.sequence_log_prob(rl.with_replies(repeated, replies, model.pad))

    seconds = {"before": _best_of(before, 1),
               "after": _best_of(lambda: sampled_nbest(model, batch, n, max_len, seed=1), 1)}
    return ({"mmi_sampling_speedup": round(seconds["before"] / seconds["after"], 2)},
            {"run": run, "trained": trained, "rows": rows, "samples_per_row": n, "vocab": model.vocab_size,
             "seconds": {k: round(v, 2) for k, v in seconds.items()}})
