"""GPMN, the Generative Profile Memory Network of Zhang et al. (2018) (methods §2).

Each persona sentence is one memory slot, an idf-weighted bag of its word embeddings. The
idf (``idf``): ``table`` (default, Zhang et al.'s weighting) is the ConvAI2 idf table of
data/persona_idf (the one Persona Coverage uses), ``idf_missing`` for words it lacks;
``persona`` is log(N / df) over the N distinct persona sentences of the training split
(this project's earlier reading). At every decoder step
the previous state attends over the slots (general attention) and the read-out joins
the decoder input and the output features, next to the usual context attention.

Decision where the papers are silent: the bag is the idf-weighted AVERAGE
Σ idf(w) e(w) / Σ idf(w), so that slot vectors keep the scale of word vectors whatever the
sentence length. GPMN attends softly and selects no sentence: ``selected_persona`` is None.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from pipeline.dataset import PERSONA, Batch
from pipeline.evaluation.metrics import load_idf
from pipeline.models import ModelContext, State, register
from pipeline.models.layers import Attention
from pipeline.models.seq2seq import Seq2Seq


def persona_idf(persona_lists, vocab, vocab_size: int) -> torch.Tensor:
    """idf(w) = log(N / df(w)) over the N distinct persona sentences; 0 for unseen words."""
    sentences = sorted({s for persona in persona_lists for s in persona})
    df = Counter(w for s in sentences for w in set(s.split()))
    idf = torch.zeros(vocab_size)
    n = max(len(sentences), 1)
    for w, c in df.items():
        i = vocab.stoi.get(w)
        if i is not None:
            idf[i] = math.log(n / c)
    return idf


def table_idf(table: dict[str, float], vocab, vocab_size: int, missing: float) -> torch.Tensor:
    """idf(w) from a word -> idf table; ``missing`` for vocabulary words it lacks."""
    idf = torch.full((vocab_size,), float(missing))
    for w, i in vocab.stoi.items():
        if w in table:
            idf[i] = table[w]
    return idf


DEFAULTS = {"idf": "table", "idf_missing": 0.58829}  # idf_missing: evaluate.idf_missing's value


@register("gpmn")
class GPMN(Seq2Seq):
    inputs = frozenset({PERSONA})

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        e = self.params["emb_dim"]
        self.memory_attention = Attention(self.params["hidden"], e, "general")
        if self.params["idf"] not in ("table", "persona"):
            raise ValueError(f"gpmn.idf {self.params['idf']!r}: table | persona")
        idf = torch.zeros(ctx.vocab_size)
        if ctx.train_data is not None:  # otherwise it comes from a checkpoint's state dict
            vocab = ctx.train_data.vocab
            if self.params["idf"] == "persona":
                idf = persona_idf(ctx.train_data.texts["persona"], vocab, ctx.vocab_size)
            elif ctx.idf_path is None:
                raise ValueError("gpmn.idf: table needs data/persona_idf/idf.tsv (the fetch stage); "
                                 "or set gpmn.idf: persona")
            else:  # a missing or malformed table is an InputError naming the file
                idf = table_idf(load_idf(ctx.idf_path), vocab, ctx.vocab_size, self.params["idf_missing"])
        self.register_buffer("idf", idf)

    def extra_context_sizes(self) -> list[int]:
        return [self.params["emb_dim"]]

    def memories(self, batch: Batch) -> torch.Tensor:
        """[B, M, E] idf-weighted average word embedding of each persona sentence."""
        emb = self.embeddings(batch.persona)  # [B, M, L, E]
        w = self.idf[batch.persona] * batch.persona_mask  # [B, M, L]
        # A sentence of only idf-0 words (in every persona) falls back to a plain average.
        w = torch.where(w.sum(-1, keepdim=True) > 0, w, batch.persona_mask.to(w.dtype))
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-6)
        return (emb * w.unsqueeze(-1).to(emb.dtype)).sum(2)

    def encode_extra(self, batch: Batch, state: State) -> State:
        return {**state, "memory": self.memories(batch), "memory_mask": batch.persona_exists}

    def extra_contexts(self, state: State, query: torch.Tensor) -> list[torch.Tensor]:
        read, _ = self.memory_attention(query, state["memory"], state["memory_mask"])
        return [read]
