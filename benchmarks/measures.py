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
    from pipeline.contrastive import groups

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


def _pruning_power(queries, docs, kth: np.ndarray, caps=(0.01, 0.02, 0.05, 0.1)) -> dict:
    """How far an inverted index with MaxScore-style pruning could go: per document-frequency
    cap, terms above it are "common"; a query's exact top-k can skip every document without
    one of its rare terms only if its k-th exact score beats the bound on what its common
    terms can add (sum of query weight x the term's largest document weight)."""
    import scipy.sparse as sp

    queries, docs = sp.csr_matrix(queries), sp.csr_matrix(docs)
    df = np.bincount(docs.indices, minlength=docs.shape[1])
    max_w = np.asarray(docs.max(axis=0).todense()).ravel()
    out = {}
    for cap in caps:
        common = df > cap * docs.shape[0]
        candidates = np.diff((queries[:, ~common] @ docs[:, ~common].T).tocsr().indptr)
        bound = queries[:, common] @ max_w[common]
        out[f"df<={cap:g}N"] = {"candidates_share": round(float(candidates.mean() / docs.shape[0]), 4),
                               "certified_share": round(float(np.mean(kth > bound)), 4)}
    return out


def pruning() -> tuple[dict, dict]:
    """Why `groups` and `congeneric` still score all pairs: on this corpus, the share of
    queries whose exact top-k an inverted index with MaxScore pruning could certify, for a
    range of rare/common splits. Both rankings are dominated by frequent words (chit-chat,
    stop words kept on purpose), so the bound on the common terms almost never falls below
    the k-th score."""
    from pipeline.contrastive import groups
    from pipeline.preprocessing import congeneric

    p = load_params("groups")
    train = read_parquet(f"{PREPARED}/train.parquet", columns=["history", "query"]).to_pydict()
    contexts = [c for c in (groups.gcl_context(h, q, p["context_tokens"]) for h, q in
                            zip(train["history"], train["query"], strict=True)) if c]
    counts, _ = groups.term_counts(contexts)
    weights = groups.bm25_weights(counts, p["k1"], p["b"])
    scores = np.asarray((counts @ weights.T).todense(), dtype=np.float32)
    np.fill_diagonal(scores, -np.inf)  # the query; its dialogue mates stay in, so the k-th score and the share are upper bounds
    kth_bm25 = -np.partition(-scores, p["top"] - 1, axis=1)[:, p["top"] - 1]
    del scores
    masked = read_parquet("data/pmi/train.parquet", columns=["masked_query"]).column("masked_query").to_pylist()
    index = congeneric.CongenericIndex(masked)
    k = load_params("congeneric")["k_max"]
    _, top = congeneric.retrieve(index, masked, k, exclude_self=True)
    from gensim import matutils

    bows = [index.tfidf[index.dictionary.doc2bow(x.split())] for x in masked]
    q = matutils.corpus2csc(bows, num_terms=index.index.index.shape[1], num_docs=len(bows), dtype=np.float32).T
    details = {"groups_bm25": _pruning_power(counts, weights, kth_bm25),
               "congeneric_tfidf": _pruning_power(q, index.index.index, top[:, -1])}
    best = {name: max(v["certified_share"] for v in d.values()) for name, d in details.items()}
    return ({"groups_pruning_certified_share": best["groups_bm25"],
             "congeneric_pruning_certified_share": best["congeneric_tfidf"]}, details)


def labelling(sample: int) -> tuple[dict, dict]:
    """Optimal-persona labels of the same training examples: ours (each distinct sentence
    encoded once, length-sorted batches) vs one encoder call per sentence occurrence."""
    from pipeline.preprocessing import persona_labels as pl

    p = load_params("persona_labels")
    train = read_parquet(f"{PREPARED}/train.parquet", columns=["response", "persona"]).to_pydict()
    rows = list(range(min(sample, len(train["response"]))))  # consecutive: whole dialogues, as in the stage
    cols = {"response": [train["response"][i] for i in rows], "persona": [train["persona"][i] for i in rows]}
    enc = pl.load_encoder(p["encoder"], p["layer"], p["max_length"])
    pl.encode(enc, ["warm up"], 1)
    fast, fast_s = _timed(pl.label_splits, enc, {"train": cols}, p["none_threshold"], p["batch_size"])
    slow, slow_s = _timed(pl.label_per_sentence, enc, cols["response"], cols["persona"], p["none_threshold"])
    agree = float(np.mean([a == b for a, b in zip(fast["train"][0], slow[0], strict=True)]))
    # What bounds the speedup: it is (occurrences / distinct sentences), the work that
    # encoding each distinct sentence once saves, times what batching gains per sentence.
    occurrences = len(cols["response"]) + sum(map(len, cols["persona"]))
    distinct = len(set(cols["response"]) | {s for ps in cols["persona"] for s in ps})
    dedup = occurrences / distinct
    # The bf16 (AMX) path: faster, but only usable if the labels stay the same.
    bf16 = pl.load_encoder(p["encoder"], p["layer"], p["max_length"], precision="bfloat16")
    pl.encode(bf16, ["warm up"], 1)
    fast16, fast16_s = _timed(pl.label_splits, bf16, {"train": cols}, p["none_threshold"], p["batch_size"])
    same16 = float(np.mean([a == b for a, b in zip(fast16["train"][0], fast["train"][0], strict=True)]))
    return (
        {"labelling_speedup": round(slow_s / fast_s, 1), "labelling_agreement": round(agree, 4)},
        {"examples": len(rows), "ours_seconds": round(fast_s, 2), "per_sentence_seconds": round(slow_s, 2),
         "encoder": p["encoder"], "occurrences": occurrences, "distinct_sentences": distinct,
         "dedup_factor": round(dedup, 2), "batching_gain": round(slow_s / fast_s / dedup, 2),
         "bf16_seconds": round(fast16_s, 2), "bf16_speedup": round(slow_s / fast16_s, 1),
         "bf16_labels_identical_share": round(same16, 4)},
    )


def matmul_peak(dtype: torch.dtype = torch.float32, sizes=(1024, 2048, 4096), repeats: int = 5) -> float:
    """Best GEMM FLOP/s of this machine in ``dtype`` over square sizes (same threads as
    training): the roof that training's achieved FLOP/s is compared with."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats if n < 4096 else 2):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _training_setup(model_name: str, steps: int, precision: str | None = None):
    """The default model of `params.yaml` on the real training split, with its batches."""
    from pathlib import Path

    from pipeline.dataset import batch_indices, load_split
    from pipeline.models import ModelContext, build_model, get_model_class, run_architecture, run_model_params
    from pipeline.train import TrainConfig, load_vocab_and_embeddings, train_params

    params = load_params()
    tp = train_params(params, model_name)
    cfg = TrainConfig.from_params({**tp, "precision": precision or tp.get("precision", "auto")})
    arch = run_architecture(params, model_name)  # a run (seq2seq_history) or an architecture
    mparams = run_model_params(params, model_name, arch)
    cls = get_model_class(arch)
    vocab, emb = load_vocab_and_embeddings(Path("data"))
    train_ds = load_split("train", vocab, cls.data_config(mparams), Path("data"))
    torch.manual_seed(cfg.seed)
    idf = Path("data") / "persona_idf" / "idf.tsv"  # GPMN's idf table, as pipeline.train passes it
    model = build_model(arch, mparams, ModelContext.from_vocab(vocab, emb, train_ds, idf))
    g = torch.Generator().manual_seed(cfg.seed)
    batches = batch_indices(train_ds.lengths(), cfg.batch_size, g, cfg.bucket)[: steps + 1]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    return model, optimizer, train_ds, batches, cfg


def _step(model, optimizer, batch, cfg, objective=None) -> int:
    """One optimizer step of the training loop, in ``cfg.precision``; returns target tokens."""
    from pipeline.train import autocast

    with autocast(torch.device("cpu"), cfg.precision):
        out = objective(model, batch, epoch=0, step=0) if objective else model(batch, method="loss")
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    optimizer.step()
    return int(out.get("target_tokens", batch.response_mask.sum()))


def _timed_steps(model, optimizer, batches, cfg, objective=None) -> tuple[float, int]:
    """One untimed warm-up step on the first batch (allocator, lazy init), then the others
    timed: (seconds, target tokens). ``batches`` may be a generator that collates each batch,
    so that collating is timed with its step."""
    batches = iter(batches)
    _step(model, optimizer, next(batches), cfg, objective)
    start, tokens = time.perf_counter(), 0
    for batch in batches:
        tokens += _step(model, optimizer, batch, cfg, objective)
    return time.perf_counter() - start, tokens


GENERATORS = ("seq2seq", "gpmn", "postks", "pednet")


def training(models=GENERATORS, steps: int = 8, rounds: int = 2) -> tuple[dict, dict]:
    """Per generator: target tokens/s of the training step (forward, backward, clip, Adam) in
    fp32 and in bf16, the same batches and the same starting weights; blocks of the two
    alternate so that outside load hits both alike, and each figure is the best block.
    FLOPs (torch's FlopCounterMode, once per batch) over the bf16 time give the fraction of
    the bf16 matmul peak measured in the same run. Headlines are PEDNet's, the slowest."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.train import TrainConfig

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    details: dict = {"steps": steps, "rounds": rounds, "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
                     "generators": {}}
    for name in models:
        model, _, ds, batches, cfg = _training_setup(name, steps)
        model.train()
        start_state = copy.deepcopy(model.state_dict())
        batches = [ds.collate(i) for i in batches]
        flops = 0
        for batch in batches[1:]:
            counter = FlopCounterMode(display=False)
            with counter:
                _step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, cfg)
            flops += counter.get_total_flops()
        rates: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
        seconds: dict[str, float] = {}
        for _ in range(rounds):
            for precision in ("fp32", "bf16"):
                model.load_state_dict(start_state)
                pcfg = TrainConfig.from_params({**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                                                "precision": precision})
                optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
                elapsed, tokens = _timed_steps(model, optimizer, batches, pcfg)
                if tokens / elapsed > rates[precision]:
                    rates[precision], seconds[precision] = tokens / elapsed, elapsed
        details["generators"][name] = {
            "batch_size": cfg.batch_size,
            "target_tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
            "speedup_vs_fp32": round(rates["bf16"] / rates["fp32"], 3),
            "flops_per_step": flops // max(len(batches) - 1, 1),
            "achieved_gflops": {k: round(flops / seconds[k] / 1e9, 2) for k in seconds},
            "fraction_of_peak": {k: round(flops / seconds[k] / peaks[k], 3) for k in seconds},
        }
    slowest = details["generators"].get("pednet") or min(details["generators"].values(),
                                                          key=lambda g: g["target_tokens_per_s"]["bf16"])
    return (
        {"train_speedup_vs_fp32": slowest["speedup_vs_fp32"],
         "train_fraction_of_bf16_peak": slowest["fraction_of_peak"]["bf16"],
         "bf16_matmul_peak_gflops": round(peaks["bf16"] / 1e9, 1),
         "fp32_matmul_peak_gflops": round(peaks["fp32"] / 1e9, 1)},
        details,
    )


def precision_parity(model_name: str = "seq2seq", seed: int = 1) -> tuple[dict, dict]:
    """The default (bf16) run of the pipeline against the same run trained in fp32 to
    convergence here (same seed, data and params): relative difference of the best
    validation NLL. Needs reports/training/<model>/seed<seed>.json from `dvc repro`."""
    import json
    import tempfile
    from pathlib import Path

    from pipeline.train import train, training_record_path

    record_path = training_record_path(model_name, seed)
    if not record_path.exists():
        raise FileNotFoundError(f"{record_path}: run `dvc repro train@{model_name}-{seed}` first")
    default = json.loads(record_path.read_text())
    params = load_params()
    params["train"] = {**params["train"], "precision": "fp32"}
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        start = time.perf_counter()
        fp32 = train(model_name, params, checkpoint_dir=Path(tmp) / "ck", live_dir=Path(tmp) / "live", seed=seed)
        minutes = (time.perf_counter() - start) / 60
    rel = abs(default["best_val_nll"] - fp32["best_val_nll"]) / fp32["best_val_nll"]
    keys = ("best_val_nll", "best_val_ppl", "epochs", "steps", "lr_decays", "stopped")
    return (
        {"bf16_vs_fp32_val_nll_rel_diff": round(rel, 5)},
        {"model": model_name, "seed": seed, "fp32_minutes": round(minutes, 1),
         default["precision"]: {k: default[k] for k in keys}, "fp32": {k: fp32[k] for k in keys}},
    )


def gcl_vs_mle(model_name: str = "seq2seq_history", rounds: int = 3, steps: int = 6) -> tuple[dict, dict]:
    """Target tokens/s of contrastive (cached reference scores) vs MLE training of the same
    model from its trained reference, at each run's own batch size. Blocks of the two
    alternate so that outside load hits both alike; the ratio is of the medians. Target
    tokens: MLE the batch's response tokens, GCL every pair of every group (2k + 1 + 2k)."""
    from pathlib import Path

    from pipeline.contrastive.gcl import GCLConfig, GroupContrastive
    from pipeline.dataset import Vocab, batch_indices, load_split
    from pipeline.train import TrainConfig, load_trained, train_params

    params = load_params()
    data = Path("data")
    vocab = Vocab.load(data / "prepared" / "vocab.parquet")
    model = load_trained(Path("checkpoints") / model_name / "seed1" / "best.pt", vocab).train()
    ds = load_split("train", vocab, type(model).data_config(model.params), data)
    gcl = GroupContrastive(GCLConfig.from_params(params["gcl"]),
                           read_parquet(data / "scored_groups" / "train.parquet"),
                           read_parquet(data / "reference_scores" / model_name / "seed1" / "train.parquet"), ds)
    runs = {"mle": (TrainConfig.from_params(train_params(params, model_name)), None),
            "gcl": (TrainConfig.from_params(train_params(params, f"{model_name}_gcl")), gcl)}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (cfg, objective) in runs.items():
            batches = batch_indices(ds.lengths(), cfg.batch_size, g, cfg.bucket)[: steps + 1]
            elapsed, tokens = _timed_steps(model, optimizer, (ds.collate(i) for i in batches), cfg, objective)
            rates[name].append(tokens / elapsed)
    med = {name: float(np.median(r)) for name, r in rates.items()}
    return (
        {"gcl_vs_mle_throughput": round(med["gcl"] / med["mle"], 3)},
        {"model": model_name, "rounds": rounds, "steps": steps,
         "batch_size": {name: cfg.batch_size for name, (cfg, _) in runs.items()},
         "median_target_tokens_per_s": {name: round(v, 1) for name, v in med.items()}},
    )


# `dvc` with ruamel's C loader hidden: its safe loader falls back to pure Python.
_PURE_DVC = "import sys; sys.modules['_ruamel_yaml'] = None; from dvc.cli import main; sys.exit(main(sys.argv[1:]))"


def dvc_yaml(repeats: int = 3) -> tuple[dict, dict]:
    """What ruamel.yaml.clib's C loader buys DVC. DVC reads params.yaml with ruamel's safe
    loader for every params dep of every stage it checks (about six reads per stage that
    ``dvc repro`` runs), reads dvc.lock with it, and rewrites dvc.lock once per stage through
    the round-trip parser, which has no C loader. Measured: a ``dvc status`` of this repository
    (every stage checked) with the loader hidden and with it, alternating; and each file's
    parse on its own."""
    import subprocess
    import sys
    from pathlib import Path

    from ruamel.yaml import YAML

    from benchmarks.speed import _best_of

    parses = {}
    for name in ("params.yaml", "dvc.lock"):
        text = Path(name).read_text()
        parses[name] = {"bytes": len(text.encode()),
                        **{loader: round(_best_of(lambda y=yaml, t=text: y.load(t), repeats), 3) for loader, yaml in (
                            ("pure_python", YAML(typ="safe", pure=True)), ("c_loader", YAML(typ="safe")),
                            ("round_trip", YAML(typ="rt")))}}
    status = {"pure_python": float("inf"), "c_loader": float("inf")}
    for _ in range(repeats):
        for loader, cmd in (("pure_python", [sys.executable, "-c", _PURE_DVC, "status", "--quiet"]),
                            ("c_loader", [sys.executable, "-m", "dvc", "status", "--quiet"])):
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True)  # exit 1 when anything is stale: not an error here
            status[loader] = min(status[loader], round(time.perf_counter() - start, 2))
    stages = len(YAML(typ="safe").load(Path("dvc.lock").read_text())["stages"])
    return ({"dvc_status_c_loader_speedup": round(status["pure_python"] / status["c_loader"], 2)},
            {"dvc_status_seconds": status, "lock_stages": stages, "parse_seconds": parses})
