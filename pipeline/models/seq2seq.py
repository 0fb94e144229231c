"""Seq2Seq with attention, no persona (PEDNet Table 2's first baseline; GCL's base model).

Bidirectional GRU encoder over the query X; decoder s_t = GRU([e(y_{t-1}); c_t], s_{t-1})
with c_t = attention(s_{t-1}, h(X)); output from [s_t; c_t] through the tied readout.

Subclasses add persona inputs through two hooks, so the encoder/decoder code exists once:
``encode_extra(batch, state)`` puts more (batch-first) tensors into the state and
``extra_contexts(state, query)`` returns more decoder inputs (each of width listed in
``extra_context_sizes``); they join both the GRU input and the readout features.
"""

from __future__ import annotations

import torch

from pipeline.dataset import Batch
from pipeline.models import Generator, ModelContext, State, register
from pipeline.models.layers import (
    Attention,
    DecoderCell,
    DecoderConfig,
    Encoder,
    EncoderConfig,
    Readout,
    init_decoder_state,
)


@register("seq2seq")
class Seq2Seq(Generator):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__(params, ctx)
        p = self.params
        e, h, layers = p["emb_dim"], p["hidden"], p["layers"]
        self.encoder = Encoder(EncoderConfig(e, h, layers, p["dropout"]))
        self.attention = Attention(h, h, p["attention"])
        extra = tuple(self.extra_context_sizes())
        self.decoder = DecoderCell(DecoderConfig(e, h, (h, *extra), layers, p["dropout"]))
        self.readout = Readout(h + h + sum(extra), self.embeddings, tie=p["tie_embeddings"], dropout=p["dropout"])

    # hooks for persona models -----------------------------------------------------------
    def extra_context_sizes(self) -> list[int]:
        return []

    def encode_extra(self, batch: Batch, state: State) -> State:
        return state

    def extra_contexts(self, state: State, query: torch.Tensor) -> list[torch.Tensor]:
        return []

    def attend_context(self, state: State, query: torch.Tensor) -> torch.Tensor:
        """c_t from the decoder query; PEDNet's PDNet overrides it to average K contexts."""
        c, _ = self.attention(query, state["context"], state["context_mask"])
        return c

    # Generator ---------------------------------------------------------------------------
    def encode_context(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h(X) [B, L, H] and the decoder's initial state s_0 [B, layers, H]."""
        out, h = self.encoder(self.embeddings(ids), mask)
        return out, init_decoder_state(h, self.params["layers"]).transpose(0, 1)

    def encode(self, batch: Batch) -> State:
        out, s0 = self.encode_context(batch.query, batch.query_mask)
        state = {"hidden": s0, "context": out, "context_mask": batch.query_mask}
        return self.encode_extra(batch, state)

    def step(self, state: State, prev_emb: torch.Tensor) -> tuple[torch.Tensor, State]:
        s_prev = state["hidden"].transpose(0, 1)  # [layers, B, H]
        query = s_prev[-1]
        c = self.attend_context(state, query)
        contexts = [c, *self.extra_contexts(state, query)]
        out, s = self.decoder(prev_emb, contexts, s_prev)
        return torch.cat([out, *contexts], -1), {**state, "hidden": s.transpose(0, 1)}
