"""A GRU language model of responses, p(T) = Π_k p(t_k | t_<k): the anti-LM penalty U(T)
of MMI-antiLM (Li et al. 2016a). A :class:`Generator` with no encoder: ``encode`` gives the
zero state whatever the context, ``step`` is the backbone's decoder cell without attention
contexts, the output layer the tied readout. Trained by the one training loop on the
training responses (its validation NLL is the responses' per-token cross-entropy).
"""

from __future__ import annotations

import torch

from pipeline.dataset import Batch
from pipeline.models import Generator, ModelContext, State, register
from pipeline.models.layers import DecoderCell, DecoderConfig, Readout


@register("response_lm")
class ResponseLM(Generator):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__(params, ctx)
        p = self.params
        self.decoder = DecoderCell(DecoderConfig(p["emb_dim"], p["hidden"], (), p["layers"], p["dropout"]))
        self.readout = Readout(p["hidden"], self.embeddings, tie=p["tie_embeddings"], dropout=p["dropout"])

    def encode(self, batch: Batch) -> State:
        b = batch.response.shape[0]
        return {"hidden": torch.zeros(b, self.params["layers"], self.params["hidden"], device=batch.response.device)}

    def step(self, state: State, prev_emb: torch.Tensor) -> tuple[torch.Tensor, State]:
        out, s = self.decoder(prev_emb, [], state["hidden"].transpose(0, 1))
        return out, {"hidden": s.transpose(0, 1)}
