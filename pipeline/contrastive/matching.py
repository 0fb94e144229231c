"""Matchers for GCL's candidate pairs (c, r) besides MSN: a MiniLM bi-encoder (zero-shot or
fine-tuned on the training pairs) and BM25; their R10@k on MSN's valid candidates, and
calibrated matching probabilities q(c, r) for the candidate pools (stages ``matcher`` and
``score_groups``).

- Text of a pair. The context is the multi-turn context as GCL and BM25 see it
  (``gcl_context``: the last ``context_tokens`` tokens, utterances separated by EOT), with
  the EOT tokens rendered as `` [SEP] `` for MiniLM (a token its tokenizer knows); the
  bot's opening turn has the context ``__silence__``. The response is the prepared text.
- MiniLM. The bundled all-MiniLM-L6-v2 (``persona_labels.load_encoder``), last layer, mean
  pooling over tokens (what the model was trained with; one pooling function,
  ``persona_labels.mean_pool``, serves encoding and fine-tuning). Contexts are cut to
  ``max_context_length`` word pieces keeping their *end* (the newest turns), responses to
  ``max_response_length``. Score = cosine of the unit vectors: a bi-encoder, so every
  context and every response is encoded once and a pair costs one dot product.
- Fine-tuning. InfoNCE with in-batch negatives over ``scale`` x cosine (symmetric by
  default: context -> response and response -> context), AdamW, seeded order; in-batch
  "negatives" with the same text as the positive are masked out (Persona-Chat repeats
  short replies and the opening context).
- BM25. The context tokens (EOT dropped) as the query, the candidate response as the
  document; idf (rank_bm25's Okapi idf, ``groups.okapi_idf``) and the average document
  length come from the training responses; a word no training response has gets the idf
  of df = 0.
- Calibration. GCL needs q in (0, 1) per pair (then s = clamp(2 (q - 0.5), -1, 1)):
  Platt scaling q = sigmoid(a x + b) of each ranker's raw score x, fitted by Newton's
  method on valid pairs: every evaluated valid context with its own response (1) and with
  its first random candidate (0, the same seeded negatives as the ranking). A monotone map,
  so it changes no ranking metric.
- Evaluation. Exactly MSN's valid candidates (``msn.valid_candidates`` with the msn
  stage's seed, count and limit): R10@1/2/5 and MRR by ``msn.ranking_metrics``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.special import expit

from pipeline.contrastive.groups import gcl_context, okapi_idf, pool_jobs
from pipeline.contrastive.msn import MSNData, ranking_metrics, valid_candidates
from pipeline.io import InputError, progress, read_parquet
from pipeline.preprocessing.persona_labels import (
    BUNDLED,
    PRECISIONS,
    _pad,
    encode,
    load_encoder,
    pooled,
    unit,
)
from pipeline.schema import EOT, GROUPS, SILENCE

log = logging.getLogger(__name__)

SEPARATOR = " [SEP] "  # EOT as MiniLM reads it: BERT's separator token
SCORERS = ("minilm", "minilm_zeroshot", "bm25")  # score_groups.scorer besides msn
CALIBRATION = "calibration.json"
Q_EPS = 1e-6  # q is kept inside (0, 1)


# -- texts -------------------------------------------------------------------------------
def context_text(tokens: list[str]) -> str:
    """MiniLM's text of ``gcl_context`` tokens: utterances separated by `` [SEP] ``."""
    utterances, current = [], []
    for t in tokens:
        if t == EOT:
            utterances.append(" ".join(current))
            current = []
        else:
            current.append(t)
    utterances.append(" ".join(current))
    utterances = [u for u in utterances if u]
    return SEPARATOR.join(utterances) if utterances else SILENCE


@dataclass
class Pairs:
    contexts: list[str]  # MiniLM text
    context_tokens: list[list[str]]  # BM25 query: gcl_context without EOT
    responses: list[str]

    def __len__(self) -> int:
        return len(self.responses)


def make_pairs(histories: list[list[str]], queries: list[str], responses: list[str], context_tokens: int) -> Pairs:
    toks = [gcl_context(list(h or []), q, context_tokens) for h, q in zip(histories, queries, strict=True)]
    return Pairs([context_text(t) for t in toks], [[w for w in t if w != EOT] for t in toks], list(responses))


def load_pairs(path: str | Path, context_tokens: int) -> Pairs:
    t = read_parquet(path, columns=["history", "query", "response"]).to_pydict()
    return make_pairs(t["history"], t["query"], t["response"], context_tokens)


def eval_candidates(response_texts: list[str], count: int, seed: int, limit: int | None = None) -> np.ndarray:
    """[E, count] valid candidates, column 0 the positive: the very call the msn stage makes
    (``valid_candidates`` reads only the response texts), so every ranker sees MSN's set."""
    n = len(response_texts)
    stub = MSNData([[]] * n, [np.zeros(0, dtype=np.int64)] * n, list(response_texts))
    return valid_candidates(stub, count, seed, limit)


# -- calibration -------------------------------------------------------------------------
@dataclass(frozen=True)
class Platt:
    a: float
    b: float

    def __call__(self, x) -> np.ndarray:
        q = expit(self.a * np.asarray(x, dtype=np.float64) + self.b)
        return np.clip(q, Q_EPS, 1 - Q_EPS)


def fit_platt(x, y, ridge: float = 1e-3, iters: int = 100) -> Platt:
    """Logistic regression of labels ``y`` (0/1) on one score ``x`` by Newton's method, on
    the standardised score with a tiny ridge (finite even on separable data)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) == 0 or len(np.unique(y)) < 2:
        raise ValueError("Platt scaling needs both labels")
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    design = np.stack([(x - mu) / sd, np.ones_like(x)], 1)
    w = np.zeros(2)
    for _ in range(iters):
        p = expit(design @ w)
        grad = design.T @ (p - y) + ridge * w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Platt(float(w[0] / sd), float(w[1] - w[0] * mu / sd))


def calibration_pairs(cands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(context rows, response rows, labels): each evaluated context with its own response
    (1) and its first random candidate (0)."""
    rows = np.arange(len(cands))
    return np.r_[rows, rows], np.r_[cands[:, 0], cands[:, 1]], np.r_[np.ones(len(rows)), np.zeros(len(rows))]


# -- BM25 --------------------------------------------------------------------------------
@dataclass
class BM25Ranker:
    """BM25 of a context (query) against a response (document), statistics of the training
    responses."""

    vocab: dict[str, int]
    idf: np.ndarray
    unseen_idf: float
    avgdl: float
    k1: float = 1.5
    b: float = 0.75

    @classmethod
    def fit(cls, responses: list[list[str]], k1: float = 1.5, b: float = 0.75) -> BM25Ranker:
        vocab: dict[str, int] = {}
        df_ids = [vocab.setdefault(w, len(vocab)) for d in responses for w in set(d)]
        df = np.bincount(np.asarray(df_ids, dtype=np.int64), minlength=len(vocab)).astype(np.float64)
        n = len(responses)
        avgdl = float(np.mean([len(d) for d in responses])) if n else 1.0
        return cls(vocab, okapi_idf(df, n), math.log(n + 0.5) - math.log(0.5), avgdl or 1.0, k1, b)

    def score_pairs(self, queries: list[list[str]], docs: list[list[str]], query_rows, doc_rows) -> np.ndarray:
        """BM25(queries[query_rows[k]], docs[doc_rows[k]]) for every k (float32); a query word
        counts once per occurrence."""
        vocab = dict(self.vocab)

        def counts(texts: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
            ids = np.fromiter((vocab.setdefault(w, len(vocab)) for d in texts for w in d), dtype=np.int64)
            indptr = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum([len(d) for d in texts], out=indptr[1:])
            return ids, indptr

        qi, qp = counts(queries)
        di, dp = counts(docs)
        v = len(vocab)
        q = sp.csr_matrix((np.ones(len(qi)), qi, qp), shape=(len(queries), v))
        d = sp.csr_matrix((np.ones(len(di)), di, dp), shape=(len(docs), v))
        q.sum_duplicates()
        d.sum_duplicates()
        idf = np.r_[self.idf, np.full(v - len(self.idf), self.unseen_idf)]
        lengths = np.diff(dp).astype(np.float64)
        norm = self.k1 * (1 - self.b + self.b * lengths / self.avgdl)
        tf = d.data
        d.data = idf[d.indices] * tf * (self.k1 + 1) / (tf + np.repeat(norm, np.diff(d.indptr)))
        query_rows, doc_rows = np.asarray(query_rows, dtype=np.int64), np.asarray(doc_rows, dtype=np.int64)
        out = np.empty(len(query_rows), dtype=np.float32)
        for s in range(0, len(out), 65536):  # bounded memory for the pools' ~10^5 pairs
            sl = slice(s, s + 65536)
            out[sl] = np.asarray(q[query_rows[sl]].multiply(d[doc_rows[sl]]).sum(1)).ravel()
        return out


# -- MiniLM ------------------------------------------------------------------------------
class MiniLMMatcher:
    """Bi-encoder: unit mean-pooled MiniLM vectors of contexts and responses; score = cosine."""

    def __init__(self, encoder: str | Path = BUNDLED, max_context_length: int = 128, max_response_length: int = 48,
                 device: str | None = None, precision: str = "float32", batch_size: int = 128):
        self.enc = load_encoder(str(encoder), layer=-1, max_length=max_context_length, device=device,
                                precision=precision, section="matcher")
        self.max_context_length = max_context_length
        self.max_response_length = max_response_length
        self.batch_size = batch_size

    def tokenize(self, texts: list[str], max_length: int, side: str) -> list[list[int]]:
        tok = self.enc.tokenizer
        old, tok.truncation_side = tok.truncation_side, side
        try:
            return tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
        finally:
            tok.truncation_side = old

    def _encode(self, texts: list[str], max_length: int, side: str, desc: str) -> np.ndarray:
        distinct = sorted(set(texts))
        index = {t: i for i, t in enumerate(distinct)}
        tok = self.enc.tokenizer
        old, tok.truncation_side = tok.truncation_side, side
        self.enc.model.eval()
        try:
            vectors = unit(encode(replace(self.enc, max_length=max_length), distinct, self.batch_size, desc))
        finally:
            tok.truncation_side = old
        return vectors[[index[t] for t in texts]] if texts else vectors

    def encode_contexts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [n, d]; a long context keeps its end (truncated from the left)."""
        return self._encode(texts, self.max_context_length, "left", "encode contexts")

    def encode_responses(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.max_response_length, "right", "encode responses")

    def score(self, contexts: list[str], responses: list[str]) -> np.ndarray:
        """Cosine of each (context, response) pair."""
        return np.einsum("nd,nd->n", self.encode_contexts(contexts), self.encode_responses(responses))

    def save(self, path: str | Path) -> None:
        self.enc.model.save_pretrained(path)
        self.enc.tokenizer.save_pretrained(path)


def bi_encoder_scores(context_vectors: np.ndarray, response_vectors: np.ndarray, context_rows, response_rows,
                      chunk: int = 65536) -> np.ndarray:
    """Row-wise dot products of the indexed vectors (float32), in bounded chunks."""
    context_rows, response_rows = np.asarray(context_rows), np.asarray(response_rows)
    out = np.empty(len(context_rows), dtype=np.float32)
    for s in range(0, len(out), chunk):
        sl = slice(s, s + chunk)
        out[sl] = np.einsum("nd,nd->n", context_vectors[context_rows[sl]], response_vectors[response_rows[sl]])
    return out


# -- fine-tuning -------------------------------------------------------------------------
@dataclass
class FineTuneConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    scale: float = 20.0
    symmetric: bool = True
    clip: float = 1.0  # max gradient norm; 0 = off
    seed: int = 1
    max_steps: int = 0  # 0 = no limit


def _text_ids(texts: list[str]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))


def fine_tune(matcher: MiniLMMatcher, pairs: Pairs, cfg: FineTuneConfig) -> dict:
    """InfoNCE with in-batch negatives on the (context, response) pairs; returns steps,
    mean training loss, in-batch accuracy and seconds."""
    import torch
    import torch.nn.functional as F

    enc = matcher.enc
    ctx_ids = matcher.tokenize(pairs.contexts, matcher.max_context_length, "left")
    resp_ids = matcher.tokenize(pairs.responses, matcher.max_response_length, "right")
    ctx_text, resp_text = _text_ids(pairs.contexts), _text_ids(pairs.responses)
    n = len(pairs)
    per_epoch = sum(1 for s in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - s) >= 2)
    total_steps = per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    torch.manual_seed(cfg.seed)
    model = enc.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    step, loss_sum, correct, seen, start = 0, 0.0, 0, 0, time.perf_counter()
    bar = progress(total=total_steps, desc="matcher fine-tune", unit="step")
    try:
        for epoch in range(cfg.epochs):
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            for s in range(0, n, cfg.batch_size):
                if step >= total_steps:
                    break
                rows = order[s : s + cfg.batch_size]
                if len(rows) < 2:  # no in-batch negative
                    continue
                c = F.normalize(pooled(enc, _pad(enc, [ctx_ids[i] for i in rows])), dim=-1)
                r = F.normalize(pooled(enc, _pad(enc, [resp_ids[i] for i in rows])), dim=-1)
                logits = cfg.scale * c @ r.T  # [i, j] = context i vs response j
                eye = torch.eye(len(rows), dtype=torch.bool, device=logits.device)
                same_r = torch.as_tensor(resp_text[rows][:, None] == resp_text[rows][None, :], device=logits.device)
                target = torch.arange(len(rows), device=logits.device)
                c2r = logits.masked_fill(same_r & ~eye, float("-inf"))
                loss = F.cross_entropy(c2r, target)
                if cfg.symmetric:
                    same_c = torch.as_tensor(ctx_text[rows][:, None] == ctx_text[rows][None, :], device=logits.device)
                    loss = (loss + F.cross_entropy(logits.T.masked_fill(same_c & ~eye, float("-inf")), target)) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                step += 1
                loss_sum += loss.item() * len(rows)
                correct += int((c2r.argmax(1) == target).sum())
                seen += len(rows)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    finally:
        bar.close()
        model.eval()
    return {"steps": step, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "train_seconds": round(time.perf_counter() - start, 1)}


# -- the stage's configuration -----------------------------------------------------------
@dataclass
class MatcherConfig:
    encoder: str = BUNDLED
    context_tokens: int = 120  # gcl_context: the last tokens of the multi-turn context (groups.context_tokens)
    max_context_length: int = 128  # MiniLM word pieces; long contexts keep their end
    max_response_length: int = 48
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    scale: float = 20.0
    symmetric: bool = True
    clip: float = 1.0
    precision: str = "float32"
    device: str = "auto"
    seed: int = 1
    max_steps: int = 0
    encode_batch_size: int = 128
    bm25_k1: float = 1.5
    bm25_b: float = 0.75

    @classmethod
    def from_params(cls, params: dict | None, section: str = "matcher") -> MatcherConfig:
        """Validate every key up front: InputError("params.yaml", "matcher.<key>: <problem>")."""
        params = params or {}
        if not isinstance(params, dict):
            raise InputError("params.yaml", f"{section}: expected a mapping, got {type(params).__name__}")
        known = {f.name: f for f in fields(cls)}

        def bad(key, problem):
            return InputError("params.yaml", f"{section}.{key}: {problem}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)

        checks = {
            "encoder": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty encoder name or path"),
            "context_tokens": (lambda v: is_int(v) and v >= 0, "an integer >= 0 (0 = the whole context)"),
            "max_context_length": (lambda v: is_int(v) and 8 <= v <= 512, "an integer in [8, 512]"),
            "max_response_length": (lambda v: is_int(v) and 8 <= v <= 512, "an integer in [8, 512]"),
            "epochs": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            "batch_size": (lambda v: is_int(v) and v >= 2, "an integer >= 2 (in-batch negatives)"),
            "lr": (lambda v: is_num(v) and v > 0, "a number > 0"),
            "weight_decay": (lambda v: is_num(v) and v >= 0, "a number >= 0"),
            "scale": (lambda v: is_num(v) and v > 0, "a number > 0"),
            "symmetric": (lambda v: isinstance(v, bool), "true or false"),
            "clip": (lambda v: is_num(v) and v >= 0, "a number >= 0 (0 = off)"),
            "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            "device": (lambda v: v in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
            "seed": (is_int, "an integer"),
            "max_steps": (lambda v: is_int(v) and v >= 0, "an integer >= 0 (0 = no limit)"),
            "encode_batch_size": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            "bm25_k1": (lambda v: is_num(v) and v >= 0, "a number >= 0"),
            "bm25_b": (lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
        }
        for key, value in params.items():
            if key not in known:
                raise bad(key, f"unknown key (expected some of {', '.join(known)})")
            ok, expected = checks[key]
            if not ok(value):
                raise bad(key, f"expected {expected}, got {value!r}")
        values = {k: (float(v) if isinstance(cls.__dataclass_fields__[k].default, float) else v)
                  for k, v in params.items()}
        return cls(**values)

    def fine_tune_config(self) -> FineTuneConfig:
        return FineTuneConfig(**{f.name: getattr(self, f.name) for f in fields(FineTuneConfig)})

    def device_name(self) -> str | None:
        return None if self.device == "auto" else self.device


# -- evaluation --------------------------------------------------------------------------
def evaluate_scores(scores: np.ndarray, cands: np.ndarray) -> tuple[dict[str, float], Platt]:
    """scores [E, C] of the candidates (column 0 the positive) -> ranking metrics and the
    Platt map fitted on the calibration pairs (positive vs first negative)."""
    scores = np.asarray(scores)
    e = len(scores)
    platt = fit_platt(np.r_[scores[:, 0], scores[:, 1]], np.r_[np.ones(e), np.zeros(e)])
    return ranking_metrics(scores), platt


def minilm_candidate_scores(matcher: MiniLMMatcher, valid: Pairs, cands: np.ndarray) -> np.ndarray:
    """Cosines [E, C]: the E evaluated contexts and the responses they need, encoded once."""
    e, c = cands.shape
    needed = np.unique(cands)
    ctx = matcher.encode_contexts(valid.contexts[:e])
    resp = np.zeros((len(valid), ctx.shape[1]), dtype=np.float32)
    resp[needed] = matcher.encode_responses([valid.responses[i] for i in needed])
    return bi_encoder_scores(ctx, resp, np.repeat(np.arange(e), c), cands.ravel()).reshape(e, c)


def bm25_candidate_scores(ranker: BM25Ranker, valid: Pairs, cands: np.ndarray) -> np.ndarray:
    e, c = cands.shape
    docs = [r.split() for r in valid.responses]
    return ranker.score_pairs(valid.context_tokens[:e], docs, np.repeat(np.arange(e), c), cands.ravel()).reshape(e, c)


# -- checkpoint --------------------------------------------------------------------------
def calibration_record(cfg: MatcherConfig, platts: dict[str, Platt]) -> dict:
    """What score_groups needs to rebuild every scorer: texts, models, BM25 and Platt maps."""
    r6 = lambda p: {"a": round(p.a, 6), "b": round(p.b, 6)}  # noqa: E731
    return {
        "context_tokens": cfg.context_tokens,
        "separator": SEPARATOR,
        "max_context_length": cfg.max_context_length,
        "max_response_length": cfg.max_response_length,
        "scorers": {
            "minilm": {"model": ".", "platt": r6(platts["minilm"])},
            "minilm_zeroshot": {"model": cfg.encoder, "platt": r6(platts["minilm_zeroshot"])},
            "bm25": {"k1": cfg.bm25_k1, "b": cfg.bm25_b, "platt": r6(platts["bm25"])},
        },
        "config": asdict(cfg),
    }


def read_calibration(matcher_dir: str | Path) -> dict:
    path = Path(matcher_dir) / CALIBRATION
    if not path.exists():
        raise InputError(path, "no matcher calibration (run the matcher stage first)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for name in SCORERS:
            record["scorers"][name]["platt"]["a"]  # noqa: B018 (presence check)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"not a matcher calibration file ({type(e).__name__}: {e})") from e
    return record


# -- scoring the candidate pools ---------------------------------------------------------
def fill_pools(groups: pa.Table, cand: list, jobs: np.ndarray, q: np.ndarray) -> pa.Table:
    """The groups table with ``msn_response_side`` / ``msn_context_side`` set from q per job."""
    n = len(cand)
    out = [[np.zeros(len(r or []), dtype=np.float32) for r in cand] for _ in range(2)]
    for (_, _, target, slot, side), value in zip(jobs.tolist(), q.tolist(), strict=True):
        out[side][target][slot] = value
    table = groups
    for name, side in (("msn_response_side", 0), ("msn_context_side", 1)):
        values = pa.array([out[side][i].tolist() if cand[i] is not None else None for i in range(n)],
                          type=pa.list_(pa.float32()))
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table.cast(GROUPS)


def score_pools(scorer: str, matcher_dir: str | Path, prepared_train: str | Path, groups: pa.Table,
                device: str | None = None, batch_size: int = 128) -> pa.Table:
    """Calibrated q(c, r') and q(c', r) of every candidate pair by ``scorer`` (one of
    SCORERS) from the matcher checkpoint; the same columns MSN fills."""
    if scorer not in SCORERS:
        raise InputError("params.yaml", f"score_groups.scorer: unknown scorer {scorer!r}")
    record = read_calibration(matcher_dir)
    spec = record["scorers"][scorer]
    platt = Platt(float(spec["platt"]["a"]), float(spec["platt"]["b"]))
    train = load_pairs(prepared_train, int(record["context_tokens"]))
    cand, jobs = pool_jobs(groups, len(train))
    ctx_rows, resp_rows = jobs[:, 0], jobs[:, 1]
    log.info("%s: scoring %d candidate pairs of %d training examples", scorer, len(jobs), len(train))
    if scorer == "bm25":
        ranker = BM25Ranker.fit([r.split() for r in train.responses], float(spec["k1"]), float(spec["b"]))
        raw = ranker.score_pairs(train.context_tokens, [r.split() for r in train.responses], ctx_rows, resp_rows)
    else:
        model = Path(matcher_dir) if spec["model"] == "." else spec["model"]
        matcher = MiniLMMatcher(model, int(record["max_context_length"]), int(record["max_response_length"]),
                                device=device, batch_size=batch_size)
        used_c, used_r = np.unique(ctx_rows), np.unique(resp_rows)
        dim = matcher.enc.model.config.hidden_size
        ctx = np.zeros((len(train), dim), dtype=np.float32)
        resp = np.zeros((len(train), dim), dtype=np.float32)
        if len(used_c):
            ctx[used_c] = matcher.encode_contexts([train.contexts[i] for i in used_c])
            resp[used_r] = matcher.encode_responses([train.responses[i] for i in used_r])
        raw = bi_encoder_scores(ctx, resp, ctx_rows, resp_rows)
    # rounded first, so that summation-order noise cannot change the output bytes
    q = np.round(platt(np.round(raw.astype(np.float64), 5)), 6).astype(np.float32)
    return fill_pools(groups, cand, jobs, q)
