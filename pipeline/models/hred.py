"""HRED, the hierarchical recurrent encoder-decoder (Serban et al. 2016; one of the GCL
paper's four generators, Table 2(a)).

The multi-turn context is split into utterances on ``<eot>`` (pipeline.models.hierarchy);
a word-level GRU encodes each utterance into a vector u_i (the shared bidirectional
:class:`~pipeline.models.layers.Encoder`, its final state); an utterance-level GRU reads
u_1 .. u_n, oldest first, into the context state c (its top layer's final state). The
decoder starts from s_0 = tanh(W c + b) and is fed c at every step:
s_t = GRU([e(y_{t-1}); c], s_{t-1}); the output comes from [s_t; c] through the tied
readout. No attention: c is all the decoder knows of the context.

Sizes: ``hidden`` for the word-level encoder (H/2 per direction), the utterance-level GRU
and the decoder, ``layers`` deep each (GCL §3.2: 2 layers, hidden 256; the project's
default backbone: 1 layer, 256). Deviation: Serban et al.'s word-level encoder is
unidirectional; here it is the project's bidirectional encoder (their HRED-Bidirectional
variant), shared with every other generator.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.dataset import Batch
from pipeline.models import ModelContext, State, register
from pipeline.models.hierarchy import HierarchicalGenerator
from pipeline.models.layers import DecoderCell, DecoderConfig, Readout, run_gru


@register("hred")
class HRED(HierarchicalGenerator):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__(params, ctx)
        p = self.params
        e, h, layers = p["emb_dim"], p["hidden"], p["layers"]
        self.utterance_gru = nn.GRU(h, h, num_layers=layers, batch_first=True,
                                    dropout=p["dropout"] if layers > 1 else 0.0)
        self.decoder = DecoderCell(DecoderConfig(e, h, (h,), layers, p["dropout"]))
        self.readout = Readout(h + h, self.embeddings, tie=p["tie_embeddings"], dropout=p["dropout"])

    def encode(self, batch: Batch) -> State:
        _, vectors, _, exists = self.encode_utterances(batch)
        n = exists.sum(1)
        packed = pack_padded_sequence(vectors, n.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, h = run_gru(self.utterance_gru, packed)  # [layers, B, H]
        context = h[-1].float() * (n > 0).unsqueeze(1).float()  # no utterance at all: c = 0
        return {"hidden": self.initial_hidden(context), "context_vector": context}

    def step(self, state: State, prev_emb: torch.Tensor) -> tuple[torch.Tensor, State]:
        c = state["context_vector"]
        out, s = self.decoder(prev_emb, [c], state["hidden"].transpose(0, 1))
        return torch.cat([out, c.to(out.dtype)], -1), {**state, "hidden": s.transpose(0, 1)}
