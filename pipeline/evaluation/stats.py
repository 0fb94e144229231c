"""Across-seed summaries and the papers' claims under a paired bootstrap.

Every headline run is trained over several seeds, so a table cell is a mean ± sd over
seeds (``summarize``), and "model B beats model A" is a claim with a confidence interval
(``evaluate_claims``) rather than a comparison of two numbers.

A claim "A < B on m" is tested on d = mean over seeds of m(B) − mean over seeds of m(A)
on the full test set. Each bootstrap replicate draws test examples with replacement (the
same draw for A and B: paired, matched by example_id) and, per run, its seeds with
replacement, recomputes m on the drawn examples of each drawn seed and takes the
difference of the seed means. Both sources of noise thus widen the interval: a claim
that holds for one lucky seed does not hold here.

Seeds are paired too. Where both runs have numbered seeds, a claim compares only the seeds
they share, and each replicate draws the same seeds for both. A fine-tune's seed K starts
from its reference's seed K (GCL, DeepRL, ...), so comparing 1 fine-tuned seed with the
mean of 3 reference seeds would measure seed luck. When a fine-tune kept its step 0, that
seed is identical to its reference, and such a claim would hold on nothing.

The interval is the 2.5th..97.5th percentile of the replicate differences, shifted by
(d − their mean) so that it is centred on d. Distinct-n needs the shift: a resample
repeats examples, whose n-grams add to the total but never to the unique count, so
Distinct of a resample is lower than on the test set (more so for the more diverse run);
for averaged metrics the shift is ~0.

Per-example statistics are computed once per (run, seed), so a replicate is a weighted
sum (BLEU, persona metrics) or a sparse product (Distinct): all claims of the report take
seconds, not the hours that rescoring text per replicate would.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy import stats as scipy_stats

from pipeline.evaluation.metrics import IDF_MISSING, ngrams, persona_scores
from pipeline.evaluation.metrics import sentence_bleu_1_4 as metrics_sentence_bleu
from pipeline.io import InputError

NOT_RUN = "not run"
NOT_SIGNIFICANT = "not significant"


# ---------------------------------------------------------------- seeds of one run


def summarize(values: Sequence[float]) -> dict:
    """Mean, sample sd (ddof = 1) and the t-based 95% CI of the mean over seeds.

    One seed has no spread: sd None and the CI collapses to the mean (JSON-safe, no NaN).
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite value among {values}")
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "sd": None, "ci95": [mean, mean], "n_seeds": 1}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n_seeds": n}


def summarize_seeds(per_seed: Sequence[Mapping[str, object]]) -> dict[str, dict]:
    """``summarize`` of every numeric value that each seed's metrics file has."""
    if not per_seed:
        raise ValueError("no seeds")
    keys = set.intersection(
        *(
            {k for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for m in per_seed
        )
    )
    return {k: summarize([m[k] for m in per_seed]) for k in sorted(keys)}


# ---------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    """``paper`` reports ``metric`` of ``lower`` below that of ``higher``."""

    paper: str
    metric: str
    lower: str
    higher: str

    @property
    def id(self) -> str:
        return f"{self.paper}:{self.metric}:{self.lower}<{self.higher}"


def ordering(paper: str, metric_names: Iterable[str], runs: Sequence[str]) -> list[Claim]:
    """``runs`` in increasing order on each metric: one claim per adjacent pair."""
    return [Claim(paper, m, a, b) for m in metric_names for a, b in zip(runs, runs[1:], strict=False)]


def improvements(paper: str, metric_names: Iterable[str], pairs: Iterable[tuple[str, str]]) -> list[Claim]:
    """(baseline, improved) pairs: the improved run above its baseline on each metric."""
    return [Claim(paper, m, base, better) for base, better in pairs for m in metric_names]


PEDNET_ORDER = ("seq2seq", "gpmn", "postks", "pednet")
GCL_METRICS = ("distinct_1", "distinct_2", "distinct_3", "bleu_1", "bleu_2", "bleu_3", "bleu_4")
# GCL Table 2(a)'s generators besides Seq2Seq, each trained by MLE (X) and by GCL (X_gcl)
GCL_GENERATORS = ("hred_history", "transformer_history", "hran_history")
# ... of which these have their GCL training's last step decoded too (stage generate_last)
GCL_LAST = ("hred_history", "transformer_history", "hran_history", "pednet")
# GCL Table 3: the learning approaches GCL is compared with, all on Seq2Seq (history context)
GCL_RUN = "seq2seq_history_gcl"
GCL_TABLE3_LEARNERS = (
    "seq2seq_history_adversarial_last", "seq2seq_history_mmi", "seq2seq_history_mmi_antilm",
    "seq2seq_history_deeprl", "seq2seq_history_cvae", "seq2seq_history_dialogwae",
)  # fmt: skip
GCL_TABLE3_METRICS = ("distinct_2", "bleu_1")
# Where GCL's Table 3 prints a learner above GCL, the claim is the paper's order, not GCL above:
# MMI's BLEU-1 is 14.03 there, GCL's 13.66. (MMI-antiLM has no paper row: GCL above it.)
GCL_TABLE3_BELOW = {("seq2seq_history_mmi", "bleu_1")}


def _gcl_table3_claims() -> list[Claim]:
    return [Claim("gcl_table3", m, GCL_RUN, x) if (x, m) in GCL_TABLE3_BELOW else Claim("gcl_table3", m, x, GCL_RUN)
            for x in GCL_TABLE3_LEARNERS for m in GCL_TABLE3_METRICS]  # fmt: skip


# PEDNet Table 2: P-F1 and P-Cover rise Seq2Seq < GPMN < PostKS < PEDNet. GCL Table 2(a):
# X + GCL above X on Dist-1/2/3 and BLEU-1..4, for each generator. GCL Table 3: GCL above each
# learner on Dist-2 and BLEU-1 (as the paper prints them). Add claims here.
CLAIMS: tuple[Claim, ...] = (
    *ordering("pednet_table2", ("persona_f1", "persona_coverage"), PEDNET_ORDER),
    *improvements("gcl_table2a", GCL_METRICS, [("seq2seq_history", "seq2seq_history_gcl"), ("pednet", "pednet_gcl")]),
    # GCL's final step whatever the selection kept (stage generate_last): the training's own effect
    *improvements("gcl_table2a", GCL_METRICS, [(x, f"{x}_gcl_last") for x in ("seq2seq_history", *GCL_LAST)]),
    *improvements("gcl_table2a", GCL_METRICS, [(x, f"{x}_gcl") for x in GCL_GENERATORS]),
    *_gcl_table3_claims(),
)

# metric -> the per-example statistics it is computed from
_NEEDS = {
    **{f"distinct_{n}": (f"ngrams_{n}",) for n in (1, 2, 3)},
    **{f"bleu_{n}": ("bleu",) for n in (1, 2, 3, 4)},
    "persona_recall": ("persona",),
    "persona_precision": ("persona",),
    "persona_f1": ("persona",),
    "persona_coverage": ("persona",),
    "query_gain": ("query_gain",),  # the collapse diagnostic; needs log_p_own / log_p_shuffled
}
SUPPORTED_METRICS = tuple(_NEEDS)


def metrics_by_run(claims: Iterable[Claim]) -> dict[str, set[str]]:
    """run -> the metrics its claims need (what ``example_stats`` must prepare)."""
    out: dict[str, set[str]] = {}
    for c in claims:
        if c.metric not in _NEEDS:
            raise ValueError(
                f"claim {c.id}: metric {c.metric!r} not supported ({', '.join(SUPPORTED_METRICS)})"
            )
        out.setdefault(c.lower, set()).add(c.metric)
        out.setdefault(c.higher, set()).add(c.metric)
    return out


# ---------------------------------------------------------------- per-example statistics


@dataclass
class ExampleStats:
    """One (run, seed)'s test generations reduced to what the claims' metrics need.

    Rows are in sorted example_id order. ``values``: additive per-example scores
    (persona_recall / _precision / _coverage, bleu_1..4, query_gain). ``ngrams``: n -> (examples ×
    n-gram types binary incidence, n-grams per example), Distinct's numerator and
    denominator for any multiset of examples.
    """

    source: str
    example_ids: tuple[str, ...]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    seed: int | None = None  # the training seed (None: a control); claims pair runs by it
    ngrams: dict[int, tuple[sparse.csr_matrix, np.ndarray]] = field(default_factory=dict)


def _incidence(token_lists: Sequence[list[str]], n: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    ids: dict[tuple[str, ...], int] = {}
    rows, cols, lengths = [], [], np.zeros(len(token_lists), dtype=np.int64)
    for i, tokens in enumerate(token_lists):
        grams = ngrams(tokens, n)
        lengths[i] = len(grams)
        for g in set(grams):
            rows.append(i)
            cols.append(ids.setdefault(g, len(ids)))
    matrix = sparse.csr_matrix(
        (
            np.ones(len(rows), dtype=np.float32),
            (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)),
        ),
        shape=(len(token_lists), len(ids)),
    )
    return matrix, lengths


def example_stats(
    generations: Mapping[str, Sequence],
    metric_names: Iterable[str],
    idf: dict[str, float] | None = None,
    idf_missing: float = IDF_MISSING,
    source: str = "",
    seed: int | None = None,
) -> ExampleStats:
    """Per-example statistics of a ``read_generations`` table for ``metric_names``
    (persona metrics need the ``idf`` table)."""
    order = sorted(range(len(generations["example_id"])), key=generations["example_id"].__getitem__)
    ids = tuple(generations["example_id"][i] for i in order)
    hyps = [generations["hypothesis"][i] for i in order]
    needs = {need for m in metric_names for need in _NEEDS[m]}
    out = ExampleStats(source, ids, seed=seed)
    if "persona" in needs:
        if idf is None:
            raise ValueError("persona metrics need the idf table")
        personas = generations["persona"]
        scores = [persona_scores(h, personas[i], idf, idf_missing) for h, i in zip(hyps, order, strict=True)]
        out.values["persona_recall"] = np.array([s.recall for s in scores], dtype=np.float64)
        out.values["persona_precision"] = np.array([s.precision for s in scores], dtype=np.float64)
        out.values["persona_coverage"] = np.array([s.coverage for s in scores], dtype=np.float64)
    if "bleu" in needs:
        refs = [generations["reference"][i] for i in order]
        bleu = np.array([metrics_sentence_bleu(r, h) for r, h in zip(refs, hyps, strict=True)], dtype=np.float64)
        for n in range(1, 5):
            out.values[f"bleu_{n}"] = bleu.reshape(-1, 4)[:, n - 1].copy()
    if "query_gain" in needs:
        own, shuffled = generations.get("log_p_own"), generations.get("log_p_shuffled")
        if own is None or shuffled is None or any(own[i] is None or shuffled[i] is None for i in order):
            raise InputError(source or "generations", "query_gain needs the log_p_own / log_p_shuffled "
                             "columns (regenerate: `dvc repro generate`)")
        out.values["query_gain"] = np.array([own[i] - shuffled[i] for i in order], dtype=np.float64)
    tokens = [h.split() for h in hyps]
    for n in (1, 2, 3):
        if f"ngrams_{n}" in needs:
            out.ngrams[n] = _incidence(tokens, n)
    return out


def metric_on_resamples(stats: ExampleStats, metric: str, counts: np.ndarray, chunk: int = 128) -> np.ndarray:
    """``metric`` on each row of ``counts`` [R, N] (how often each example is drawn; a row
    of ones is the test set), exactly as pipeline.evaluation.metrics defines it on that multiset."""
    counts = np.asarray(counts, dtype=np.float64)
    drawn = counts.sum(axis=1)
    if metric.startswith("distinct_"):
        incidence, lengths = stats.ngrams[int(metric.rsplit("_", 1)[1])]
        totals = counts @ lengths
        # a type is among the resample's unique n-grams iff some drawn example has it
        by_type = incidence.T.tocsr()
        unique = np.concatenate([
            np.count_nonzero(by_type @ (counts[s : s + chunk] > 0).T.astype(np.float32), axis=0)
            for s in range(0, len(counts), chunk)
        ]) if by_type.shape[0] else np.zeros(len(counts))  # fmt: skip
        return np.divide(unique, totals, out=np.zeros(len(counts)), where=totals > 0)
    if metric == "persona_f1":  # of the averaged R and P (pipeline.evaluation.metrics.persona_metrics)
        r = counts @ stats.values["persona_recall"] / drawn
        p = counts @ stats.values["persona_precision"] / drawn
        return np.divide(2 * r * p, r + p, out=np.zeros(len(counts)), where=r + p > 0)
    return counts @ stats.values[metric] / drawn


def resample_counts(n_examples: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, n_examples]: how often each example is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_examples, size=(replicates, n_examples))
    flat = (draws + np.arange(replicates)[:, None] * n_examples).ravel()
    return (
        np.bincount(flat, minlength=replicates * n_examples)
        .reshape(replicates, n_examples)
        .astype(np.float64)
    )


# ---------------------------------------------------------------- testing a claim


class _Bootstrap:
    """One example resample per test-set size, shared by every claim, and each (run, seed,
    metric)'s value on it computed once (a run is in several claims)."""

    def __init__(self, replicates: int, seed: int):
        self.replicates, self.seed = replicates, seed
        self._counts: dict[int, np.ndarray] = {}
        self._values: dict[tuple[int, str], tuple[float, np.ndarray]] = {}

    def values(self, stats: ExampleStats, metric: str) -> tuple[float, np.ndarray]:
        key = (id(stats), metric)
        if key not in self._values:
            n = len(stats.example_ids)
            if n not in self._counts:
                self._counts[n] = resample_counts(n, self.replicates, self.seed)
            full = float(metric_on_resamples(stats, metric, np.ones((1, n)))[0])
            self._values[key] = (full, metric_on_resamples(stats, metric, self._counts[n]))
        return self._values[key]


def _seed_means(values: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """values [seeds, R], pick [R, draws] -> [R]: per replicate, the mean over its drawn seeds."""
    return values.T[np.arange(values.shape[1])[:, None], pick].mean(axis=1)


def paired_seeds(lower: Sequence[ExampleStats], higher: Sequence[ExampleStats]):
    """(lower, higher, paired): where both runs number their seeds, only the seeds they
    share, in the same order (paired); otherwise both as they are (independent)."""
    seeds_l, seeds_h = [s.seed for s in lower], [s.seed for s in higher]
    if None in seeds_l or None in seeds_h:
        return list(lower), list(higher), False
    common = sorted(set(seeds_l) & set(seeds_h))
    if not common:
        return list(lower), list(higher), False
    by_l, by_h = dict(zip(seeds_l, lower, strict=True)), dict(zip(seeds_h, higher, strict=True))
    return [by_l[k] for k in common], [by_h[k] for k in common], True


def _not_run(claim: Claim, n_lower: int, n_higher: int, replicates: int) -> dict:
    return {
        "id": claim.id, "paper": claim.paper, "metric": claim.metric, "lower": claim.lower,
        "higher": claim.higher, "difference": None, "ci95": None, "p_value": None, "holds": NOT_RUN,
        "means": None, "n_seeds": {"lower": n_lower, "higher": n_higher}, "n_examples": None,
        "paired_seeds": None, "bootstrap": replicates,
    }  # fmt: skip


def judge_claim(claim: Claim, runs: Mapping[str, Sequence[ExampleStats]], boot: _Bootstrap) -> dict:
    lower, higher = list(runs.get(claim.lower) or []), list(runs.get(claim.higher) or [])
    if not lower or not higher:
        return _not_run(claim, len(lower), len(higher), boot.replicates)
    lower, higher, paired = paired_seeds(lower, higher)
    reference = lower[0]
    for s in lower[1:] + higher:
        if s.example_ids != reference.example_ids:
            raise InputError(
                s.source,
                f"its test examples differ from {reference.source}'s: claim {claim.id} pairs them by example_id",
            )
    full_lower, rep_lower = zip(*(boot.values(s, claim.metric) for s in lower), strict=True)
    full_higher, rep_higher = zip(*(boot.values(s, claim.metric) for s in higher), strict=True)
    mean_lower, mean_higher = math.fsum(full_lower) / len(lower), math.fsum(full_higher) / len(higher)
    difference = mean_higher - mean_lower
    # the seed draws: per claim, so that a claim's result does not depend on the others
    rng = np.random.default_rng([boot.seed, zlib.crc32(claim.id.encode())])
    pick_higher = rng.integers(0, len(higher), size=(boot.replicates, len(higher)))
    pick_lower = pick_higher if paired else rng.integers(0, len(lower), size=(boot.replicates, len(lower)))
    replicates = _seed_means(np.array(rep_higher), pick_higher) - _seed_means(np.array(rep_lower), pick_lower)
    centred = replicates - replicates.mean() + difference
    lo, hi = (float(q) for q in np.percentile(centred, [2.5, 97.5]))
    tail = min(int(np.count_nonzero(centred <= 0)), int(np.count_nonzero(centred >= 0)))
    holds: bool | str = True if lo > 0 else False if hi < 0 else NOT_SIGNIFICANT
    return {
        "id": claim.id, "paper": claim.paper, "metric": claim.metric, "lower": claim.lower,
        "higher": claim.higher, "difference": difference, "ci95": [lo, hi],
        "p_value": min(1.0, 2 * (tail + 1) / (boot.replicates + 1)), "holds": holds,
        "means": {"lower": mean_lower, "higher": mean_higher},
        "n_seeds": {"lower": len(lower), "higher": len(higher)}, "n_examples": len(reference.example_ids),
        "paired_seeds": [s.seed for s in higher] if paired else None, "bootstrap": boot.replicates,
    }  # fmt: skip


def evaluate_claims(
    claims: Sequence[Claim], runs: Mapping[str, Sequence[ExampleStats]], replicates: int = 1000, seed: int = 1
) -> list[dict]:
    """One entry per claim, in order: ``difference`` (higher − lower, seed means on the test
    set), ``ci95``, ``holds`` (True: CI above 0, False: below 0, else "not significant";
    "not run" when a run has no seeds), a two-sided bootstrap ``p_value``, the sizes and
    ``paired_seeds`` (the seeds compared, or None when the runs were compared unpaired).
    ``runs``: run -> its seeds' ExampleStats (``example_stats``)."""
    if replicates < 1:
        raise ValueError(f"need at least one bootstrap replicate, got {replicates}")
    boot = _Bootstrap(replicates, seed)
    return [judge_claim(c, runs, boot) for c in claims]
