"""HRAN, the hierarchical recurrent attention network (Xing et al. 2018; one of the GCL
paper's four generators, Table 2(a)).

The multi-turn context is split into utterances on ``<eot>`` (pipeline.models.hierarchy)
and every utterance i is encoded word by word by the shared bidirectional
:class:`~pipeline.models.layers.Encoder`: h_{i,j}. At every decoding step t, from the
decoder state s_{t-1} (Xing et al. §3):

- word-level attention within each utterance, its query the decoder state and the
  utterance-level state of the utterance after it:
  α^t_{i,j} ∝ exp(v_w·tanh(W_h h_{i,j} + W_s s_{t-1} + W_l l^t_{i+1})), r^t_i = Σ_j α^t_{i,j} h_{i,j};
- an utterance-level GRU reads the utterance vectors backwards, from the most recent to
  the oldest: l^t_i = GRU(r^t_i, l^t_{i+1}), l^t_{n+1} = 0 (hence the order: utterance i's
  word attention needs l^t_{i+1});
- utterance-level attention across them: β^t_i ∝ exp(v_u·tanh(U_s s_{t-1} + U_l l^t_i)),
  c_t = Σ_i β^t_i l^t_i;
- s_t = GRU([e(y_{t-1}); c_t], s_{t-1}), output from [s_t; c_t] through the tied readout.

The paper leaves s_0 open; here s_0 = tanh(W l^0_1 + b), l^0 the same utterance-level GRU
run once over the word encoder's final states (no attention), as HRED starts from its
context state. The utterance-level GRU is the shared :class:`~pipeline.models.layers.DecoderCell`
(stacked GRU cells, bf16 matmuls under autocast) fed r^t_i alone.

Sizes: ``hidden`` for the word-level encoder (H/2 per direction), the utterance-level GRU,
the decoder and both attention MLPs; ``layers`` deep (GCL §3.2: 2 layers, hidden 256).
Cost: the attention is recomputed for every utterance at every step, sequentially over
the utterances (the paper's dependence on l^t_{i+1}): a decoding step runs one
utterance-level GRU step per utterance of the batch's longest context. Measured on this
machine's CPU (one thread, bf16, batch 64, 120-token histories of ~10 turns, 40-token
responses): a training step ~3x HRED's and ~2x Seq2Seq's. (Bilinear instead of MLP
scores saved only ~12%, so the paper's MLP stays.)
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.dataset import Batch
from pipeline.models import ModelContext, State, register
from pipeline.models.hierarchy import HierarchicalGenerator
from pipeline.models.layers import DecoderCell, DecoderConfig, Readout, masked_softmax


@register("hran")
class HRAN(HierarchicalGenerator):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__(params, ctx)
        p = self.params
        e, h, layers = p["emb_dim"], p["hidden"], p["layers"]
        # word-level attention MLP: W_h (applied once per context), W_s, W_l, v_w
        self.word_key = nn.Linear(h, h, bias=False)
        self.word_query = nn.Linear(h, h)  # W_s s_{t-1} (+ the MLP's bias)
        self.word_next = nn.Linear(h, h, bias=False)  # W_l l_{i+1}
        self.word_score = nn.Linear(h, 1, bias=False)
        # utterance-level attention MLP: U_l, U_s, v_u
        self.utt_key = nn.Linear(h, h, bias=False)
        self.utt_query = nn.Linear(h, h)
        self.utt_score = nn.Linear(h, 1, bias=False)
        self.utterance_cell = DecoderCell(DecoderConfig(h, h, (), layers, p["dropout"]))
        self.decoder = DecoderCell(DecoderConfig(e, h, (h,), layers, p["dropout"]))
        self.readout = Readout(h + h, self.embeddings, tie=p["tie_embeddings"], dropout=p["dropout"])

    @staticmethod
    def score(v: nn.Linear, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The MLP η: keys [B, N, H] (already projected), query [B, H] (projected, with the
        bias) -> scores v·tanh(keys + query) [B, N]."""
        return v(torch.tanh(keys + query.unsqueeze(1))).squeeze(-1)

    def utterance_states(self, inputs: torch.Tensor, exists: torch.Tensor, word_query=None, state=None):
        """The backward utterance-level GRU: l_i = GRU(r_i, l_{i+1}) from i = n down to 1.

        ``inputs`` [B, U, H] are the r_i themselves, or (``word_query`` [B, H] given) the
        word-level attention computes r_i from ``state``'s word states with query
        W_s s_{t-1} + W_l l_{i+1}. Slots past a row's last utterance leave l unchanged.
        Returns l [B, U, H] (the top layer)."""
        b, u = exists.shape
        layers, h = self.params["layers"], self.params["hidden"]
        l_state = torch.zeros(layers, b, h, device=exists.device)
        out = [None] * u
        # Per-utterance tensors, split once per encoding (state keys "words<i>", ...): the
        # backward of a slice x[:, i], or of an unbind at every decoding step, would write a
        # tensor of x's full size each time (measured: 80%, then 22% of a training step).
        if word_query is None:
            rs = inputs.unbind(1)
        else:
            keys, words, masks = ([state[f"{k}{i}"] for i in range(u)] for k in ("word_keys", "words", "word_mask"))
        for i in reversed(range(u)):
            if word_query is None:
                r = rs[i]
            else:
                scores = self.score(self.word_score, keys[i], word_query + self.word_next(l_state[-1]))
                alpha = masked_softmax(scores, masks[i])
                r = torch.bmm(alpha.unsqueeze(1).to(words[i].dtype), words[i]).squeeze(1)
            _, new = self.utterance_cell(r, [], l_state)
            l_state = torch.where(exists[:, i].view(1, b, 1), new, l_state)
            out[i] = l_state[-1]
        return torch.stack(out, 1)

    def encode(self, batch: Batch) -> State:
        words, vectors, word_mask, exists = self.encode_utterances(batch)
        l0 = self.utterance_states(vectors, exists)
        state = {"hidden": self.initial_hidden(l0[:, 0]), "exists": exists}
        for name, x in (("words", words), ("word_keys", self.word_key(words)), ("word_mask", word_mask)):
            state.update({f"{name}{i}": part for i, part in enumerate(x.unbind(1))})  # [B, L, ...] each
        return state

    def step(self, state: State, prev_emb: torch.Tensor) -> tuple[torch.Tensor, State]:
        s_prev = state["hidden"].transpose(0, 1)  # [layers, B, H]
        query = s_prev[-1]
        l_states = self.utterance_states(None, state["exists"], self.word_query(query), state)  # [B, U, H]
        scores = self.score(self.utt_score, self.utt_key(l_states), self.utt_query(query))
        beta = masked_softmax(scores, state["exists"])
        c = torch.bmm(beta.unsqueeze(1).to(l_states.dtype), l_states).squeeze(1)
        out, s = self.decoder(prev_emb, [c], s_prev)
        return torch.cat([out, c.to(out.dtype)], -1), {**state, "hidden": s.transpose(0, 1)}
