"""The individual measurements of `python -m benchmarks`; each returns (headline, details)."""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.io import load_params, read_parquet

PREPARED = "data/prepared"


def torch_threads() -> int:
    return torch.get_num_threads()


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _sample(n: int, k: int) -> list[int]:
    return sorted(np.random.default_rng(0).choice(n, size=min(k, n), replace=False).tolist())


def bm25(sample: int) -> tuple[dict, dict]:
    """Our sparse-matrix BM25 pools over all training contexts vs rank_bm25's per-query
    `get_scores` loop, timed on a sample of queries and extrapolated to all of them."""
    from pipeline import groups

    p = load_params("groups")
    train = read_parquet(f"{PREPARED}/train.parquet", columns=["history", "query"]).to_pydict()
    contexts = [groups.gcl_context(h, q, p["context_tokens"]) for h, q in zip(train["history"], train["query"], strict=True)]
    kw = dict(top=p["top"], bottom=p["bottom"], k1=p["k1"], b=p["b"])
    fast, fast_s = _timed(groups.bm25_pools, contexts, **kw)
    rows = _sample(len(contexts), sample)
    slow, slow_s = _timed(groups.rank_bm25_pools, contexts, queries=rows, **kw)
    slow_all = slow_s * len(contexts) / len(rows)
    return (
        {"bm25_speedup": round(slow_all / fast_s, 1), "bm25_top10_agreement": round(groups.top_agreement(fast, slow, rows), 4)},
        {"queries": len(contexts), "ours_seconds": round(fast_s, 2), "rank_bm25_sample_queries": len(rows),
         "rank_bm25_sample_seconds": round(slow_s, 2), "rank_bm25_extrapolated_seconds": round(slow_all, 1)},
    )


def labelling(sample: int) -> tuple[dict, dict]:
    """Optimal-persona labels of the same training examples: ours (each distinct sentence
    encoded once, length-sorted batches) vs one encoder call per sentence occurrence."""
    from pipeline import persona_labels as pl

    p = load_params("persona_labels")
    train = read_parquet(f"{PREPARED}/train.parquet", columns=["response", "persona"]).to_pydict()
    rows = list(range(min(sample, len(train["response"]))))  # consecutive: whole dialogues, as in the stage
    cols = {"response": [train["response"][i] for i in rows], "persona": [train["persona"][i] for i in rows]}
    enc = pl.load_encoder(p["encoder"], p["layer"], p["max_length"])
    pl.encode(enc, ["warm up"], 1)
    fast, fast_s = _timed(pl.label_splits, enc, {"train": cols}, p["none_threshold"], p["batch_size"])
    slow, slow_s = _timed(pl.label_per_sentence, enc, cols["response"], cols["persona"], p["none_threshold"])
    agree = float(np.mean([a == b for a, b in zip(fast["train"][0], slow[0], strict=True)]))
    return (
        {"labelling_speedup": round(slow_s / fast_s, 1), "labelling_agreement": round(agree, 4)},
        {"examples": len(rows), "ours_seconds": round(fast_s, 2), "per_sentence_seconds": round(slow_s, 2),
         "encoder": p["encoder"]},
    )


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GEMM FLOP/s of this machine (same threads as training)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _training_setup(model_name: str, steps: int):
    """The default model of `params.yaml` on the real training split, with its batches."""
    from pathlib import Path

    from pipeline.dataset import batch_indices, load_split
    from pipeline.models import ModelContext, build_model, get_model_class, model_params
    from pipeline.train import TrainConfig, load_vocab_and_embeddings, train_params

    params = load_params()
    cfg = TrainConfig.from_params(train_params(params, model_name))
    mparams = model_params(params, model_name)
    cls = get_model_class(model_name)
    vocab, emb = load_vocab_and_embeddings(Path("data"))
    train_ds = load_split("train", vocab, cls.data_config(mparams), Path("data"))
    torch.manual_seed(cfg.seed)
    model = build_model(model_name, mparams, ModelContext.from_vocab(vocab, emb, train_ds))
    g = torch.Generator().manual_seed(cfg.seed)
    batches = batch_indices(train_ds.lengths(), cfg.batch_size, g, cfg.bucket)[: steps + 1]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    return model, optimizer, train_ds, batches, cfg


def _step(model, optimizer, batch, cfg, objective=None) -> int:
    out = objective(model, batch, epoch=0, step=0) if objective else model(batch, method="loss")
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    optimizer.step()
    return int(out.get("target_tokens", batch.response_mask.sum()))


def training(model_name: str = "pednet", steps: int = 20) -> tuple[dict, dict]:
    """Target tokens/s and achieved FLOP/s of the default training step (forward,
    backward, clip, Adam), FLOPs counted by torch's FlopCounterMode on every timed step."""
    from torch.utils.flop_counter import FlopCounterMode

    model, optimizer, ds, batches, cfg = _training_setup(model_name, steps)
    model.train()
    _step(model, optimizer, ds.collate(batches[0]), cfg)  # warm-up (allocator, lazy init)
    flops, tokens, seconds = 0, 0, 0.0
    for index in batches[1:]:
        batch = ds.collate(index)
        counter = FlopCounterMode(display=False)
        with counter:
            _step(model, optimizer, batch, cfg)
        flops += counter.get_total_flops()
        start = time.perf_counter()  # timed again outside the counter, which slows the step
        tokens += _step(model, optimizer, batch, cfg)
        seconds += time.perf_counter() - start
    peak = matmul_peak()
    achieved = flops / seconds
    return (
        {"train_fraction_of_matmul_peak": round(achieved / peak, 3)},
        {"model": model_name, "steps": len(batches) - 1, "batch_size": cfg.batch_size,
         "target_tokens_per_s": round(tokens / seconds, 1), "achieved_gflops": round(achieved / 1e9, 2),
         "matmul_peak_gflops": round(peak / 1e9, 2), "flops_per_step": flops // max(len(batches) - 1, 1)},
    )


def gcl_vs_mle(model_name: str = "seq2seq", rounds: int = 3, steps: int = 6) -> tuple[dict, dict]:
    """Target tokens/s of contrastive (cached reference scores) vs MLE training of the same
    model from its trained reference, at each run's own batch size. Blocks of the two
    alternate so that outside load hits both alike; the ratio is of the medians. Target
    tokens: MLE the batch's response tokens, GCL every pair of every group (2k + 1 + 2k)."""
    from pathlib import Path

    from pipeline.dataset import Vocab, batch_indices, load_split
    from pipeline.gcl import GCLConfig, GroupContrastive
    from pipeline.train import TrainConfig, load_trained, train_params

    params = load_params()
    data = Path("data")
    vocab = Vocab.load(data / "prepared" / "vocab.parquet")
    model = load_trained(Path("checkpoints") / model_name / "best.pt", vocab).train()
    ds = load_split("train", vocab, type(model).data_config(model.params), data)
    gcl = GroupContrastive(GCLConfig.from_params(params["gcl"]),
                           read_parquet(data / "scored_groups" / "train.parquet"),
                           read_parquet(data / "reference_scores" / model_name / "train.parquet"), ds)
    runs = {"mle": (TrainConfig.from_params(train_params(params, model_name)), None),
            "gcl": (TrainConfig.from_params(train_params(params, f"{model_name}_gcl")), gcl)}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (cfg, objective) in runs.items():
            batches = batch_indices(ds.lengths(), cfg.batch_size, g, cfg.bucket)[: steps + 1]
            _step(model, optimizer, ds.collate(batches[0]), cfg, objective)  # warm-up
            start, tokens = time.perf_counter(), 0
            for index in batches[1:]:
                tokens += _step(model, optimizer, ds.collate(index), cfg, objective)
            rates[name].append(tokens / (time.perf_counter() - start))
    med = {name: float(np.median(r)) for name, r in rates.items()}
    return (
        {"gcl_vs_mle_throughput": round(med["gcl"] / med["mle"], 3)},
        {"model": model_name, "rounds": rounds, "steps": steps,
         "batch_size": {name: cfg.batch_size for name, (cfg, _) in runs.items()},
         "median_target_tokens_per_s": {name: round(v, 1) for name, v in med.items()}},
    )
