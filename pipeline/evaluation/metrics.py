"""Automatic metrics of both papers, exactly as methods §4 defines them.

PEDNet (Table 2): Distinct-1/2, Persona Recall / Precision / F1, Persona Coverage.
GCL (Table 2a): BLEU-1..4, Distinct-1/2/3, embedding Average / Extrema / Greedy, Coherence,
Entropy-1/2.

Every ratio is a fraction (0.051, not 5.1%); entropies are in bits. Text is the pipeline's
normalised, space-tokenised text, so tokens are ``str.split()``. An empty hypothesis has no
n-grams (adds nothing to Distinct), scores BLEU 0, persona 0, embedding metrics 0 and
entropy 0, and still counts as one sentence in every per-sentence average.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.io import InputError
from pipeline.preprocessing.text import content_words
from pipeline.schema import SILENCE, SPECIALS

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "distinct_1", "distinct_2", "distinct_3",
    "persona_recall", "persona_precision", "persona_f1", "persona_coverage",
    # the same four against another test dialogue's persona (shuffled_personas), and the
    # F1 the own persona adds: a reply that ignores its persona gains about 0
    "persona_recall_shuffled", "persona_precision_shuffled", "persona_f1_shuffled",
    "persona_coverage_shuffled", "persona_f1_gain",
    "bleu_1", "bleu_2", "bleu_3", "bleu_4",
    "emb_average", "emb_extrema", "emb_greedy", "coherence",
    "entropy_1", "entropy_2",
)  # fmt: skip

# The collapse diagnostic, from the generations' log_p_own / log_p_shuffled columns
# (pipeline.decode.query_log_probs): in nats per token. Only for runs of a model whose
# generations have them (not the controls, not files written before the columns): a
# metrics file may lack these keys, unlike METRIC_KEYS.
QUERY_KEYS = ("query_gain", "query_log_p_own", "query_log_p_shuffled")

# Degeneracy (mode collapse): how many different replies a run gives over the test turns,
# and the share of turns given its most frequent one (the gold responses: all distinct).
# Written by evaluate for every run; a seed above COLLAPSED_SHARE is a collapsed run, and
# the report flags every claim that rests on one.
DEGENERACY_KEYS = ("distinct_replies", "top_reply_share")
COLLAPSED_SHARE = 0.25

# idf of a word absent from the table: the value the table gives a word of GloVe rank
# ~400,000 (../shared/data/README.md), i.e. the rarest words weigh the most.
PERSONA_IDF = "data/persona_idf/idf.tsv"  # the fetch stage copies params fetch.idf here
IDF_MISSING = 0.58829


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))  # shorter tails end it


# ---------------------------------------------------------------- Distinct (both papers)


def distinct(hypotheses: Iterable[Sequence[str]], n: int) -> float:
    """Corpus-level Distinct-n: unique n-grams over all responses / total n-grams (0 if none)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in hypotheses:
        grams = ngrams(tokens, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def degeneracy(hypotheses: Sequence[str]) -> dict[str, float | int]:
    """``distinct_replies``: different replies (whitespace-normalised strings);
    ``top_reply_share``: the share of replies equal to the most frequent one (0 if none)."""
    counts = Counter(" ".join(h.split()) for h in hypotheses)
    top = max(counts.values(), default=0)
    return {"distinct_replies": len(counts), "top_reply_share": top / len(hypotheses) if hypotheses else 0.0}


# ---------------------------------------------------------------- persona metrics (PEDNet)


def load_idf(path: str | os.PathLike) -> dict[str, float]:
    """``word<TAB>idf`` lines (Song et al. 2019's ConvAI2 table)."""
    idf: dict[str, float] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(path, f"cannot read idf table ({e.strerror})") from None
    with f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            word, sep, value = line.rpartition("\t")
            try:
                if not sep:
                    raise ValueError
                idf[word] = float(value)
            except ValueError:
                raise InputError(path, f"expected 'word<TAB>idf', got {line[:60]!r}", line_no) from None
    if not idf:
        raise InputError(path, "idf table is empty")
    return idf


@dataclass(frozen=True)
class PersonaScores:
    recall: float
    precision: float
    coverage: float


def persona_scores(
    hypothesis: str, persona: Sequence[str], idf: dict[str, float], idf_missing: float = IDF_MISSING
) -> PersonaScores:
    """One example's persona Recall / Precision / Coverage (methods §4), maxima over sentences.

    W_Y, W_p: non-stop words (ParlAI's list). Recall = max_i |W_Y ∩ W_pi| / |W_pi|,
    Precision = max_i |W_Y ∩ W_pi| / |W_Y|, Coverage = max_i mean idf over W_Y ∩ W_pi.
    Each maximum is taken on its own (they may come from different sentences).
    """
    w_y = content_words(hypothesis)
    recall = precision = coverage = 0.0
    if not w_y:
        return PersonaScores(0.0, 0.0, 0.0)
    for sentence in persona:
        w_p = content_words(sentence)
        overlap = w_y & w_p
        if not overlap:
            continue
        recall = max(recall, len(overlap) / len(w_p))
        precision = max(precision, len(overlap) / len(w_y))
        # sorted: a fixed summation order, so the float sum does not depend on set order
        cov = math.fsum(idf.get(w, idf_missing) for w in sorted(overlap)) / len(overlap)
        coverage = max(coverage, cov)
    return PersonaScores(recall, precision, coverage)


def persona_metrics(
    hypotheses: Sequence[str],
    personas: Sequence[Sequence[str]],
    idf: dict[str, float],
    idf_missing: float = IDF_MISSING,
) -> dict[str, float]:
    """Averages over examples; F1 = 2RP/(R+P) of the averaged R and P.

    F1 from the averages (not an average of per-example F1s): every row of PEDNet's
    Table 2 satisfies it, e.g. Seq2Seq 2·0.048·0.030/0.078 = 0.037, PEDNet
    2·0.143·0.088/0.231 = 0.109.
    """
    scores = [persona_scores(h, p, idf, idf_missing) for h, p in zip(hypotheses, personas, strict=True)]
    n = len(scores)
    r = math.fsum(s.recall for s in scores) / n if n else 0.0
    p = math.fsum(s.precision for s in scores) / n if n else 0.0
    cov = math.fsum(s.coverage for s in scores) / n if n else 0.0
    f1 = 2 * r * p / (r + p) if r + p > 0 else 0.0
    return {"persona_recall": r, "persona_precision": p, "persona_f1": f1, "persona_coverage": cov}


def dialogue_of(example_id: str) -> str:
    """``test-00428-05`` -> ``test-00428`` (the example_id layout of schema.PREPARED)."""
    dialogue, _, turn = example_id.rpartition("-")
    if not dialogue or not turn.isdigit():
        raise ValueError(f"example_id {example_id!r} is not '<split>-<dialogue>-<turn>'")
    return dialogue


def shuffled_partners(example_ids: Sequence[str], personas: Sequence[Sequence[str]]) -> dict[str, str]:
    """dialogue -> the dialogue whose persona the shuffled-persona control scores it against.

    Dialogues in sorted order d_0..d_{n-1}; d_i is paired with the first of
    d_{i + n//2}, d_{i + n//2 + 1}, ... (cyclic) whose persona, as a set of sentences,
    differs from its own. No RNG, so every model meets the same pairing; Persona-Chat
    reuses each persona for several dialogues, hence the skip: an identical persona would
    make the control a copy of the real score.
    """
    own: dict[str, frozenset[str]] = {}
    for example_id, persona in sorted(zip(example_ids, personas, strict=True), key=lambda x: x[0]):
        d = dialogue_of(example_id)
        if own.setdefault(d, frozenset(persona)) != frozenset(persona):
            raise ValueError(f"dialogue {d} has different personas in different turns ({example_id})")
    dialogues = sorted(own)
    n = len(dialogues)
    partners = {}
    for i, d in enumerate(dialogues):
        for step in range(n):
            other = dialogues[(i + n // 2 + step) % n]
            if other != d and own[other] != own[d]:
                partners[d] = other
                break
        else:
            raise ValueError(
                f"no dialogue has a persona other than {d}'s: the shuffled-persona control needs two"
            )
    return partners


def shuffled_personas(example_ids: Sequence[str], personas: Sequence[Sequence[str]]) -> list[list[str]]:
    """Per example, the persona of its dialogue's partner (``shuffled_partners``)."""
    partners = shuffled_partners(example_ids, personas)
    persona_of = {dialogue_of(e): list(p) for e, p in zip(example_ids, personas, strict=True)}
    return [persona_of[partners[dialogue_of(e)]] for e in example_ids]


def persona_control_metrics(
    hypotheses: Sequence[str],
    personas: Sequence[Sequence[str]],
    shuffled: Sequence[Sequence[str]],
    idf: dict[str, float],
    idf_missing: float = IDF_MISSING,
) -> dict[str, float]:
    """Persona metrics against the own persona and against ``shuffled`` (``*_shuffled``),
    and ``persona_f1_gain`` = own − shuffled F1: generic persona-like words ("i love to
    read") score against any persona; only the gain shows that a model uses its own."""
    out = persona_metrics(hypotheses, personas, idf, idf_missing)
    control = persona_metrics(hypotheses, shuffled, idf, idf_missing)
    out.update({f"{k}_shuffled": v for k, v in control.items()})
    out["persona_f1_gain"] = out["persona_f1"] - out["persona_f1_shuffled"]
    return out


# ---------------------------------------------------------------- BLEU (GCL, via ParlAI)

# ParlAI's normalize_answer, which GCL's BLEU ran through: lower-case, punctuation and
# articles become spaces, whitespace collapses.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[!\"#$%&()*+,-./:;<=>?@\[\]\\^`{|}~_']")
BLEU_WEIGHTS = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]


def bleu_tokens(text: str) -> list[str]:
    text = _PUNCTUATION.sub(" ", text.lower())
    return _ARTICLES.sub(" ", text).split()


def sentence_bleu_1_4(reference: str, hypothesis: str) -> list[float]:
    """NLTK 3.x sentence BLEU-1..4 (cumulative, uniform weights, smoothing method1,
    ε = 1e-12; :func:`nltk_sentence_bleu_1_4`): the same float operations in the same order,
    bit-identical and ~30x faster (NLTK's Fractions cost ~0.6 ms a sentence, most of the
    bootstrap's time otherwise). An empty hypothesis, or one without a matching unigram,
    scores 0 as in NLTK."""
    hyp = bleu_tokens(hypothesis)
    if not hyp:
        return [0.0] * 4
    ref = bleu_tokens(reference)
    fractions = []  # (clipped matches, n-gram count) per order, NLTK's modified_precision
    for n in range(1, 5):
        counts = Counter(ngrams(hyp, n))
        ref_counts = Counter(ngrams(ref, n))
        matches = sum(min(c, ref_counts[g]) for g, c in counts.items())
        fractions.append((matches, max(1, sum(counts.values()))))
    if fractions[0][0] == 0:
        return [0.0] * 4
    c, r = len(hyp), len(ref)
    bp = 1 if c > r else math.exp(1 - r / c)
    logs = [math.log(m / d if m else (m + 1e-12) / d) for m, d in fractions]
    return [bp * math.exp(math.fsum(w * lg for w, lg in zip(weights, logs, strict=False)))
            for weights in ((1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25))]  # fmt: skip



def nltk_sentence_bleu_1_4(reference: str, hypothesis: str) -> list[float]:
    """NLTK sentence BLEU-1..4 itself (the oracle :func:`sentence_bleu_1_4` is tested against) (cumulative, uniform weights, smoothing method1, ε = 1e-12).

    An empty hypothesis (after normalisation) scores 0; NLTK does the same for a
    hypothesis with no matching unigram.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp = bleu_tokens(hypothesis)
    if not hyp:
        return [0.0] * 4
    scores = sentence_bleu(
        [bleu_tokens(reference)], hyp, weights=BLEU_WEIGHTS,
        smoothing_function=SmoothingFunction(epsilon=1e-12).method1,
    )  # fmt: skip
    return [float(s) for s in scores]


def bleu_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    scores = np.array(
        [sentence_bleu_1_4(r, h) for r, h in zip(references, hypotheses, strict=True)], dtype=np.float64
    ).reshape(-1, 4)
    means = scores.mean(axis=0) if len(scores) else np.zeros(4)
    return {f"bleu_{n}": float(means[n - 1]) for n in range(1, 5)}


# ---------------------------------------------------------------- training n-gram statistics


@dataclass
class NgramStats:
    """Unigram and bigram counts of the training utterances (GCL's dictionary counts)."""

    counts: dict[int, Counter]
    totals: dict[int, int]

    @classmethod
    def from_texts(cls, texts: Iterable[str], orders: Sequence[int] = (1, 2)) -> NgramStats:
        counts = {n: Counter() for n in orders}
        for text in texts:
            tokens = text.split()
            for n in orders:
                counts[n].update(ngrams(tokens, n))
        return cls(counts, {n: sum(c.values()) for n, c in counts.items()})

    def probability(self, gram: tuple[str, ...]) -> float:
        n = len(gram)
        return self.counts[n][gram] / self.totals[n] if self.totals[n] else 0.0


def sentence_entropy(tokens: Sequence[str], stats: NgramStats, n: int) -> float:
    """−(1/|n-grams|) Σ log₂ p(g); unseen n-grams add 0 but count in |n-grams| (GCL's code)."""
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    total = 0.0
    for g in grams:
        p = stats.probability(g)
        if p > 0:
            total -= math.log2(p)
    return total / len(grams)


def entropy_metrics(hypotheses: Sequence[Sequence[str]], stats: NgramStats) -> dict[str, float]:
    out = {}
    for n in (1, 2):
        values = [sentence_entropy(t, stats, n) for t in hypotheses]
        out[f"entropy_{n}"] = math.fsum(values) / len(values) if values else 0.0
    return out


# ---------------------------------------------------------------- embedding metrics (GCL)


class WordVectors:
    """Word vectors plus the weight a/(a + p(w)) of each word (p = training unigram frequency).

    Special tokens (``<unk>``, ``__silence__``, ...) have no vector: a response of
    ``<unk>``s is not "similar" to anything, and an opening turn's ``__silence__`` query
    leaves Coherence undefined for that example (GloVe, which GCL used, has neither).
    """

    def __init__(self, tokens: Sequence[str], vectors: np.ndarray, stats: NgramStats, a: float = 0.001):
        if vectors.ndim != 2 or len(tokens) != vectors.shape[0]:
            raise ValueError("need one vector row per token")
        specials = set(SPECIALS)
        self.index = {t: i for i, t in enumerate(tokens) if t not in specials}
        self.vectors = vectors.astype(np.float64)
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit = np.divide(self.vectors, norms, out=np.zeros_like(self.vectors), where=norms > 0)
        total = stats.totals.get(1, 0)
        freq = np.array([stats.counts[1][(t,)] / total if total else 0.0 for t in tokens], dtype=np.float64)
        self.weights = a / (a + freq)  # unseen in training: p = 0, weight 1

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        return np.array([self.index[t] for t in tokens if t in self.index], dtype=np.int64)


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return float(x @ y / (nx * ny)) if nx > 0 and ny > 0 else 0.0


def _extrema(v: np.ndarray) -> np.ndarray:
    """Per dimension, the value of largest magnitude (the max on ties, as in GCL's code)."""
    hi, lo = v.max(axis=0), v.min(axis=0)
    return np.where(np.abs(lo) > hi, lo, hi)


def _greedy_one_way(x_unit: np.ndarray, y_unit: np.ndarray) -> float:
    return float((x_unit @ y_unit.T).max(axis=1).mean())


def embedding_scores(ref: np.ndarray, hyp: np.ndarray, wv: WordVectors) -> tuple[float, float, float] | None:
    """(Average, Extrema, Greedy) for one pair of token-id arrays; None if ``ref`` has no vector.

    Average: cosine of the a/(a+p(w))-weighted sums. Extrema and Greedy are unweighted, as
    in GCL's code (for Greedy a weight would cancel in the token cosines anyway).
    A hypothesis without vectors scores 0 on all three.
    """
    if len(ref) == 0:
        return None
    if len(hyp) == 0:
        return 0.0, 0.0, 0.0
    average = _cosine(wv.weights[ref] @ wv.vectors[ref], wv.weights[hyp] @ wv.vectors[hyp])
    extrema = _cosine(_extrema(wv.vectors[ref]), _extrema(wv.vectors[hyp]))
    ru, hu = wv.unit[ref], wv.unit[hyp]
    greedy = (_greedy_one_way(ru, hu) + _greedy_one_way(hu, ru)) / 2
    return average, extrema, greedy


def embedding_metrics(
    references: Sequence[Sequence[str]],
    hypotheses: Sequence[Sequence[str]],
    queries: Sequence[Sequence[str]],
    wv: WordVectors,
) -> dict[str, float]:
    """Means over examples. Examples whose reference (for Coherence: query) has no word
    vector are left out of that mean, as GCL's code does."""
    emb = []
    coherence = []
    for ref, hyp, query in zip(references, hypotheses, queries, strict=True):
        r, h, q = wv.ids(ref), wv.ids(hyp), wv.ids(query)
        s = embedding_scores(r, h, wv)
        if s is not None:
            emb.append(s)
        if len(q):
            # Coherence = Average between the response and the last context utterance
            coherence.append(
                _cosine(wv.weights[q] @ wv.vectors[q], wv.weights[h] @ wv.vectors[h]) if len(h) else 0.0
            )
    means = np.array(emb, dtype=np.float64).mean(axis=0) if emb else np.zeros(3)
    return {
        "emb_average": float(means[0]),
        "emb_extrema": float(means[1]),
        "emb_greedy": float(means[2]),
        "coherence": math.fsum(coherence) / len(coherence) if coherence else 0.0,
        "n_emb_examples": len(emb),
        "n_coherence_examples": len(coherence),
    }


# ---------------------------------------------------------------- collapse diagnostic


def query_metrics(log_p_own: Sequence[float | None] | None,
                  log_p_shuffled: Sequence[float | None] | None) -> dict[str, float]:
    """``query_gain`` = mean over examples of log p(r | c) − log p(r | c′) per token (c′:
    another example's context), and the two means; {} when the log-probs are missing
    (None, or every value null: a control or an older generations file)."""
    if log_p_own is None or log_p_shuffled is None:
        return {}
    if len(log_p_own) != len(log_p_shuffled):
        raise ValueError("log_p_own and log_p_shuffled differ in length")
    pairs = [(a, b) for a, b in zip(log_p_own, log_p_shuffled, strict=True) if a is not None and b is not None]
    if not pairs:
        return {}
    if len(pairs) != len(log_p_own):
        raise ValueError(f"log-probs null in {len(log_p_own) - len(pairs)} of {len(log_p_own)} rows")
    own = np.array([a for a, _ in pairs], dtype=np.float64)
    shuffled = np.array([b for _, b in pairs], dtype=np.float64)
    return {"query_gain": math.fsum(own - shuffled) / len(own), "query_log_p_own": math.fsum(own) / len(own),
            "query_log_p_shuffled": math.fsum(shuffled) / len(own)}


# ---------------------------------------------------------------- everything


def evaluate(
    *,
    hypotheses: Sequence[str],
    references: Sequence[str],
    queries: Sequence[str],
    personas: Sequence[Sequence[str]],
    shuffled_personas: Sequence[Sequence[str]],
    idf: dict[str, float],
    stats: NgramStats,
    vectors: WordVectors,
    idf_missing: float = IDF_MISSING,
    log_p_own: Sequence[float | None] | None = None,
    log_p_shuffled: Sequence[float | None] | None = None,
) -> dict[str, float | int]:
    """Every metric of both papers for one model's test generations, plus the
    shuffled-persona control (``shuffled_personas``: see the function of that name) and,
    when the log-probs are given, the QUERY_KEYS (``query_metrics``)."""
    hyp_tokens = [h.split() for h in hypotheses]
    out: dict[str, float | int] = {f"distinct_{n}": distinct(hyp_tokens, n) for n in (1, 2, 3)}
    out.update(degeneracy(hypotheses))
    out.update(persona_control_metrics(hypotheses, personas, shuffled_personas, idf, idf_missing))
    out.update(bleu_metrics(references, hypotheses))
    # the query is SILENCE when the bot opens; WordVectors gives it no vector
    out.update(
        embedding_metrics([r.split() for r in references], hyp_tokens, [q.split() for q in queries], vectors)
    )
    out.update(entropy_metrics(hyp_tokens, stats))
    out.update(query_metrics(log_p_own, log_p_shuffled))
    out["n_examples"] = len(hypotheses)
    out["n_empty_hypotheses"] = sum(1 for t in hyp_tokens if not t)
    return out


# ---------------------------------------------------------------- inputs of the evaluate stage


def load_training_stats(path: str | os.PathLike) -> NgramStats:
    """n-gram counts of the training text, each piece once (``pipeline.preprocessing.vocab.training_texts``:
    a dialogue's persona sentences, then every query and response), ``__silence__`` skipped.
    GCL's ParlAI dictionary counted the same text: persona lines and every utterance."""
    from pipeline.io import read_parquet
    from pipeline.preprocessing.vocab import training_texts

    texts = [t for t in training_texts(read_parquet(path)) if t and t != SILENCE]
    stats = NgramStats.from_texts(texts)
    log.info("n-gram counts from %s: %d texts, %d tokens", path, len(texts), stats.totals[1])
    return stats


def load_word_vectors(path: str | os.PathLike, stats: NgramStats, a: float = 0.001) -> WordVectors:
    """``data/embeddings/vectors.parquet`` (schema EMBEDDINGS) as a WordVectors."""
    from pipeline.io import read_parquet

    table = read_parquet(path, columns=["token", "vector"])
    tokens = table.column("token").to_pylist()
    vectors = table.column("vector").combine_chunks()
    lengths = np.diff(np.asarray(vectors.offsets))
    if len(tokens) == 0 or lengths.min() != lengths.max() or lengths[0] == 0:
        raise InputError(path, "expected one non-empty vector of the same size per token")
    matrix = np.asarray(vectors.flatten(), dtype=np.float32).reshape(len(tokens), int(lengths[0]))
    return WordVectors(tokens, matrix, stats, a)


def read_generations(path: str | os.PathLike) -> dict[str, list]:
    """A ``reports/generations/<run>/<seed K | control>.parquet`` file (schema GENERATIONS), checked.
    Files without the optional columns (GENERATIONS_OPTIONAL: written before they existed)
    read as if those were null."""
    from pipeline.io import read_parquet
    from pipeline.schema import GENERATIONS, GENERATIONS_OPTIONAL

    table = read_parquet(path)
    missing = [c for c in GENERATIONS.names if c not in table.column_names and c not in GENERATIONS_OPTIONAL]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (schema GENERATIONS)")
    if table.num_rows == 0:
        raise InputError(path, "no generations")
    cols = {c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
            for c in GENERATIONS.names}
    own, shuffled = cols["log_p_own"], cols["log_p_shuffled"]
    for i, (a, b) in enumerate(zip(own, shuffled, strict=True)):
        if (a is None) != (b is None) or (a is None) != (own[0] is None):
            raise InputError(path, f"row {i}: log_p_own / log_p_shuffled null in some rows only")
        if a is not None and not (math.isfinite(a) and math.isfinite(b)):
            raise InputError(path, f"row {i}: log_p_own / log_p_shuffled not finite ({a}, {b})")
    for c in ("example_id", "persona", "context", "reference", "hypothesis"):
        if None in cols[c]:
            raise InputError(path, f"row {cols[c].index(None)}: {c} is null")
    if len(set(cols["example_id"])) != len(cols["example_id"]):
        dup = Counter(cols["example_id"]).most_common(1)[0][0]
        raise InputError(path, f"example_id {dup!r} appears more than once")
    return cols
