"""The generator interface every model implements, and the registry name -> class.

A model is a :class:`Generator` subclass in ``pipeline/models/<name>.py`` decorated with
``@register("<name>")``. It declares the inputs it needs (``inputs``, see
``pipeline.dataset``) and implements two things:

- ``encode(batch) -> state``: a dict of tensors, every one batch-first ([B, ...]), so
  that beam search can reorder/expand it with ``index_select(0, idx)`` (the default
  :meth:`Generator.reorder_state`). Non-tensor values are not allowed (use tensors).
- ``step(state, prev_emb [B, E]) -> (features [B, D], state)``: one decoder step fed the
  embedding of the previous token (the caller embeds: teacher forcing embeds the whole
  response once, so the embedding's backward, a dense [V, E] gradient, runs once and not
  once per step); the features go through ``self.readout`` (a tied
  :class:`~pipeline.models.layers.Readout`).

From those the base class derives everything the training loop, the shared decoder
(``pipeline.decode``) and the contrastive objective use:

- ``loss(batch, **ctx) -> dict``: ``loss`` (backprop), ``nll_sum`` and ``n_tokens``
  (token-level validation NLL / perplexity), optionally ``persona_correct`` /
  ``persona_total``. ``ctx`` carries ``epoch``/``step`` from the loop (e.g. PostKS's
  BOW-only warm-up); models ignore what they do not use. Override to add losses.
- ``sequence_log_prob(batch) -> [B]``: teacher-forced Σ_t log p(y_t | ...) over the
  response including ``</s>``, no length normalisation (GCL's D(c, r)).
- ``decode_step(state, prev_tokens) -> (log_probs [B, V], state)``,
  ``selected_persona(state) -> [B] long or None`` (index into the example's persona,
  -1 = "no persona" selected; None = the model never selects), ``reorder_state(state, idx)``.

Call through ``model(batch, method="loss", **ctx)`` rather than ``model.loss(...)`` when
the model may be wrapped in DistributedDataParallel (only ``forward`` syncs gradients).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import Batch, DataConfig
from pipeline.models.layers import Embeddings, Readout
from pipeline.params_schema import RUN_KEYS  # the loop's and learners' sub-sections of a run

State = dict[str, torch.Tensor]

# Backbone defaults (params.yaml `model`); a model's own section may override any of them.
BACKBONE_DEFAULTS: dict[str, Any] = {
    "emb_dim": None,  # None = the embeddings stage's width
    "hidden": 256,
    "layers": 1,
    "dropout": 0.1,
    "attention": "dot",
    "tie_embeddings": True,
    "freeze_embeddings": False,
    "context": "query",  # query | history (pipeline.dataset.DataConfig.context)
}

_REGISTRY: dict[str, type[Generator]] = {}


def register(name: str):
    def deco(cls: type[Generator]) -> type[Generator]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_model_class(name: str) -> type[Generator]:
    """The class registered as ``name``, importing ``pipeline.models.<name>`` on demand."""
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"pipeline.models.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"pipeline.models.{name}":
                raise
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r} (registered: {sorted(_REGISTRY)})")
    return _REGISTRY[name]


def run_architecture(all_params: dict, run: str) -> str:
    """The generator a run trains: its params section's ``model`` key, else the run's own
    name (``seq2seq_history: {model: seq2seq, context: history}`` is a Seq2Seq run)."""
    return (all_params.get(run) or {}).get("model", run)


def model_params(all_params: dict, name: str) -> dict:
    """Backbone defaults <- params.yaml `model` <- the model's own section (minus its
    `train` overrides, which belong to the loop)."""
    own = {k: v for k, v in (all_params.get(name) or {}).items() if k not in ("train", "model", "reference")}
    return {**BACKBONE_DEFAULTS, **(all_params.get("model") or {}), **own}


def run_model_params(all_params: dict, run: str, model: str | None = None) -> dict:
    """The model params of run ``run`` (architecture ``model``, default its section's
    ``model`` key): :func:`model_params` of the architecture <- every key of the run's own
    section but the loop's and the learners' sub-sections (``train``, ``gcl``, ...).
    ``seq2seq_history_cvae: {model: cvae, latent: 32}`` trains a CVAE with latent 32;
    params_schema.validate_run rejects a key the architecture does not take."""
    model = model or run_architecture(all_params, run)
    mparams = model_params(all_params, model)
    if run != model:
        mparams.update({k: v for k, v in (all_params.get(run) or {}).items() if k not in RUN_KEYS})
    return mparams


@dataclass
class ModelContext:
    """What a model may need besides its params when it is built."""

    vocab_size: int
    pad: int = 0
    unk: int = 1
    bos: int = 2
    eos: int = 3
    embeddings: np.ndarray | None = None  # [V, E] initial word vectors (None: random / from a checkpoint)
    train_data: Any = None  # pipeline.dataset.DialogueDataset of the training split (e.g. GPMN's idf)
    idf_path: Any = None  # data/persona_idf/idf.tsv of the project (GPMN's idf: table reads it)

    @classmethod
    def from_vocab(cls, vocab, embeddings=None, train_data=None, idf_path=None) -> ModelContext:
        return cls(len(vocab), vocab.pad, vocab.unk, vocab.bos, vocab.eos, embeddings, train_data, idf_path)


class Generator(nn.Module):
    name: ClassVar[str] = ""
    inputs: ClassVar[frozenset[str]] = frozenset()  # optional dataset inputs this model reads

    @property
    def warmup_epochs(self) -> int:
        """Leading epochs whose validations do not step the LR schedule or early stopping
        (PostKS's BOW-only warm-up)."""
        return 0

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__()
        params = {**BACKBONE_DEFAULTS, **params}
        if ctx.embeddings is not None:
            if params["emb_dim"] not in (None, ctx.embeddings.shape[1]):
                raise ValueError(f"emb_dim {params['emb_dim']} != embeddings width {ctx.embeddings.shape[1]}")
            params["emb_dim"] = int(ctx.embeddings.shape[1])
        if params["emb_dim"] is None:
            raise ValueError("emb_dim is None and no embeddings were given")
        self.params = params  # resolved; saved with checkpoints so the model can be rebuilt
        self.pad, self.bos, self.eos = ctx.pad, ctx.bos, ctx.eos
        self.vocab_size = ctx.vocab_size
        self.embeddings = Embeddings(ctx.vocab_size, params["emb_dim"], ctx.pad, ctx.embeddings,
                                     freeze=params["freeze_embeddings"], dropout=params["dropout"])
        self.readout: Readout  # built by the subclass once it knows its feature width

    @classmethod
    def data_config(cls, params: dict) -> DataConfig:
        """Truncation and inputs to load, from the resolved model params (PEDNet maps its
        ``k`` to ``congeneric_k``)."""
        return DataConfig.from_params(params, cls.inputs)

    # -- to implement ---------------------------------------------------------------
    def encode(self, batch: Batch) -> State:
        raise NotImplementedError

    def step(self, state: State, prev_emb: torch.Tensor) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def selected_persona(self, state: State) -> torch.Tensor | None:
        return None

    # -- derived --------------------------------------------------------------------
    def forward(self, batch: Batch, method: str = "loss", **kwargs):
        return getattr(self, method)(batch, **kwargs)

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        return {k: (v.index_select(0, index) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

    def decode_step(self, state: State, prev_tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        features, state = self.step(state, self.embeddings(prev_tokens))
        return F.log_softmax(self.readout(features).float(), dim=-1), state

    def teacher_forced_features(self, batch: Batch, state: State | None = None) -> torch.Tensor:
        """[B, T, D] readout inputs of every response position, decoder fed the gold prefix."""
        if state is None:
            state = self.encode(batch)
        inputs = self.embeddings(batch.decoder_input(self.bos))  # [B, T, E], embedded once
        features = []
        for t in range(inputs.shape[1]):
            f, state = self.step(state, inputs[:, t])
            features.append(f)
        return torch.stack(features, 1)

    def teacher_forced_logits(self, batch: Batch, state: State | None = None) -> torch.Tensor:
        """[B, T, V] logits of every response position, decoder fed the gold prefix."""
        return self.readout(self.teacher_forced_features(batch, state))  # one big matmul for all steps

    def token_nll(self, batch: Batch, state: State | None = None) -> torch.Tensor:
        """[B, T] −log p(y_t) of the gold response (0 at padding), float32. The readout, the
        largest matmul of a step, runs on the real tokens only (a third of the positions of a
        batch are padding)."""
        features = self.teacher_forced_features(batch, state)
        real = batch.response_mask.bool()
        logits = self.readout(features[real])  # [N, V]
        nll = features.new_zeros(real.shape, dtype=torch.float32)
        nll[real] = F.cross_entropy(logits.float(), batch.response[real], reduction="none")
        return nll

    def nll_terms(self, batch: Batch, state: State | None = None) -> dict[str, torch.Tensor]:
        nll = self.token_nll(batch, state)
        nll_sum = nll.sum()
        n_tokens = batch.response_mask.sum()
        return {"loss": nll_sum / n_tokens.clamp(min=1), "nll_sum": nll_sum.detach(), "n_tokens": n_tokens}

    def loss(self, batch: Batch, **ctx) -> dict[str, torch.Tensor]:
        return self.nll_terms(batch)

    def sequence_log_prob(self, batch: Batch, **ctx) -> torch.Tensor:
        return -self.token_nll(batch).sum(1)


def build_model(name: str, params: dict, ctx: ModelContext) -> Generator:
    return get_model_class(name)(params, ctx)


def perplexity(nll_sum: float, n_tokens: float) -> float:
    return math.exp(min(nll_sum / max(n_tokens, 1), 50.0))
