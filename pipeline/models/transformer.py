"""Transformer encoder-decoder (Vaswani et al. 2017; one of the GCL paper's four
generators, Table 2(a)).

The flat multi-turn context (turns joined by ``<eot>``, which stays a token here: the
encoder sees where turns end) is encoded by ``layers`` self-attention blocks; the decoder
has ``layers`` blocks of causal self-attention, cross-attention over the encoder output
and a feed-forward layer. Width ``hidden`` (d_model), ``heads`` heads, feed-forward
``ff_dim``, sinusoidal positions, dropout ``dropout`` (split by site as ``DEFAULTS`` says). The shared word embeddings
(``emb_dim``, e.g. the 300-d vectors) are projected to d_model when the widths differ, and
the output goes through the shared tied :class:`~pipeline.models.layers.Readout`.

The paper's base model (GCL §3.2): ``-S transformer.layers=6 -S transformer.heads=8
-S transformer.hidden=512 -S transformer.ff_dim=2048``. Defaults fit 2 CPU cores
(params.yaml ``transformer``: 2 + 2 blocks, 4 heads, 256 wide, feed-forward 512, dropout 0.3).

Deviation: ``norm_first: true`` (the default) puts the layer norm before each sub-layer
(pre-LN, with a final norm) rather than after it (post-LN, Vaswani et al.): pre-LN trains
stably with or without the loop's LR warm-up (``train.warmup_steps``); ``norm_first: false``
is the paper's arrangement. ``context_positions: from_end`` counts the encoder's positions
back from the latest token (the default, ``from_start``, is the paper's).

Generator interface: teacher forcing runs the decoder over all positions at once
(:meth:`teacher_forced_logits`); decoding runs it one position at a time
(:meth:`step`), caching every block's self-attention keys and values in the state as
batch-first [B, t, d] tensors (so beam search reorders them like any state) and the
cross-attention keys and values of the encoder output once, in :meth:`encode`. Both give
the same log-probabilities. Softmaxes run in float32 (``layers.masked_softmax``), the
matmuls under autocast in bf16; a context without any token attends uniformly, not NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import Batch
from pipeline.models import Generator, ModelContext, State, register
from pipeline.models.layers import Readout, masked_softmax

# The dropout sites (null = the model's ``dropout``): attention probabilities, the
# feed-forward inner layer and the readout features; ``dropout`` itself covers the word
# embeddings and every residual branch. The GCL authors' split: 0.2 / 0.1 / 0.1 / none.
DEFAULTS = {"heads": 4, "ff_dim": 1024, "norm_first": True, "attention_dropout": None, "ff_dropout": None,
            "readout_dropout": None, "context_positions": "from_start"}
# The encoder's positions: ``from_start`` counts from the oldest kept token (Vaswani et al.,
# the GCL authors), so the latest turn sits at a different position in every example;
# ``from_end`` counts back from the last token, so the latest turn always starts near 0.


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal position encodings [..., dim] of integer ``positions`` (Vaswani et al. §3.5)."""
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    angles = positions.unsqueeze(-1).float() * torch.exp(half * (-math.log(10000.0) / dim))
    pe = torch.zeros(*positions.shape, dim, device=positions.device)
    pe[..., 0::2] = torch.sin(angles)
    pe[..., 1::2] = torch.cos(angles[..., : dim // 2])
    return pe


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``heads`` heads. Keys and values are projected by
    :meth:`keys_values` (cacheable); ``mask`` [B, Lq or 1, Lk] bool, True = may attend."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer hidden {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k(x), self.v(x)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, lq, d = x.shape
        lk = k.shape[1]
        q = self.q(x).view(b, lq, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, lk, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, lk, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, h, Lq, Lk]
        w = self.dropout(masked_softmax(scores, mask.unsqueeze(1)))
        out = torch.matmul(w.to(v.dtype), v).transpose(1, 2).reshape(b, lq, d)
        return self.o(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ff_dim: int, dropout: float):
        super().__init__()
        self.inner, self.outer = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.dropout(F.relu(self.inner(x))))


class Block(nn.Module):
    """One encoder block (self-attention, feed-forward) or, with ``cross``, one decoder
    block (causal self-attention, cross-attention, feed-forward); residual connections
    around each sub-layer, layer norm before (``norm_first``) or after it."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, norm_first: bool, cross: bool,
                 attention_dropout: float, ff_dropout: float):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(dim, heads, attention_dropout) if cross else None
        self.ff = FeedForward(dim, ff_dim, ff_dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3 if cross else 2))
        self.dropout = nn.Dropout(dropout)

    def sublayer(self, i: int, x: torch.Tensor, fn) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(fn(self.norms[i](x))).float()
        return self.norms[i](x + self.dropout(fn(x)).float()).float()

    def self_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the self-attention's keys and values are computed from."""
        return self.norms[0](x) if self.norm_first else x

    def forward(self, x: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor] | None, self_mask: torch.Tensor,
                memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        def attend(h):
            k, v = self_kv if self_kv is not None else self.self_attn.keys_values(h)
            return self.self_attn(h, k, v, self_mask)

        x = self.sublayer(0, x, attend)
        if self.cross_attn is not None:
            x = self.sublayer(1, x, lambda h: self.cross_attn(h, *memory_kv, memory_mask))
        return self.sublayer(len(self.norms) - 1, x, self.ff)


@register("transformer")
class Transformer(Generator):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        p = self.params
        e, d, n = p["emb_dim"], p["hidden"], p["layers"]
        drop = {k: p["dropout"] if p[k] is None else p[k] for k in ("attention_dropout", "ff_dropout", "readout_dropout")}
        args = (d, p["heads"], p["ff_dim"], p["dropout"], p["norm_first"])
        sites = {"attention_dropout": drop["attention_dropout"], "ff_dropout": drop["ff_dropout"]}
        self.input_proj = nn.Linear(e, d) if e != d else nn.Identity()
        self.encoder_blocks = nn.ModuleList(Block(*args, cross=False, **sites) for _ in range(n))
        self.decoder_blocks = nn.ModuleList(Block(*args, cross=True, **sites) for _ in range(n))
        self.encoder_norm = nn.LayerNorm(d) if p["norm_first"] else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if p["norm_first"] else nn.Identity()
        self.readout = Readout(d, self.embeddings, tie=p["tie_embeddings"], dropout=drop["readout_dropout"])

    def embed(self, emb: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Word embeddings [B, L, E] (dropout already applied by ``Embeddings``) at ``positions``
        [L] or [B, L] -> block input [B, L, d], float32.

        The words are scaled by sqrt(d) (Vaswani et al. §3.4): pretrained vectors projected to
        d have a norm near 1, the sinusoids sqrt(d / 2); unscaled, the words were a tenth of
        the block input. (The scaling alone did not stop the model ignoring its context on
        the slice: query_gain 0.044 -> 0.037.)"""
        d = self.params["hidden"]
        return self.input_proj(emb).float() * math.sqrt(d) + sinusoid(positions, d)

    def encode(self, batch: Batch) -> State:
        ids, mask = batch.query, batch.query_mask
        positions = torch.arange(ids.shape[1], device=ids.device)
        if self.params["context_positions"] == "from_end":  # padding (masked) clamped to 0
            positions = (mask.sum(1, keepdim=True) - 1 - positions).clamp(min=0)
        x = self.embed(self.embeddings(ids), positions)
        for block in self.encoder_blocks:
            x = block(x, None, mask.unsqueeze(1))
        memory = self.encoder_norm(x)
        b = ids.shape[0]
        state: State = {"memory_mask": mask, "position": torch.zeros(b, dtype=torch.long, device=ids.device)}
        for i, block in enumerate(self.decoder_blocks):
            state[f"memory_k{i}"], state[f"memory_v{i}"] = block.cross_attn.keys_values(memory)
            state[f"self_k{i}"] = state[f"self_v{i}"] = memory.new_zeros(b, 0, self.params["hidden"])
        return state

    def decode(self, x: torch.Tensor, state: State, self_mask: torch.Tensor, cache: bool) -> tuple[torch.Tensor, State]:
        """The decoder blocks over inputs x [B, T, d]: with ``cache``, x is the next position
        and every block's self-attention also sees the cached earlier positions."""
        new = dict(state)
        memory_mask = state["memory_mask"].unsqueeze(1)
        for i, block in enumerate(self.decoder_blocks):
            k, v = block.self_attn.keys_values(block.self_input(x))
            if cache:
                k = new[f"self_k{i}"] = torch.cat([state[f"self_k{i}"], k.to(state[f"self_k{i}"].dtype)], 1)
                v = new[f"self_v{i}"] = torch.cat([state[f"self_v{i}"], v.to(state[f"self_v{i}"].dtype)], 1)
            x = block(x, (k, v), self_mask, (state[f"memory_k{i}"], state[f"memory_v{i}"]), memory_mask)
        return self.decoder_norm(x), new

    def step(self, state: State, prev_emb: torch.Tensor) -> tuple[torch.Tensor, State]:
        x = self.embed(prev_emb.unsqueeze(1), state["position"].unsqueeze(1))
        mask = torch.ones(x.shape[0], 1, state["self_k0"].shape[1] + 1, dtype=torch.bool, device=x.device)
        out, state = self.decode(x, state, mask, cache=True)
        return out.squeeze(1), {**state, "position": state["position"] + 1}

    def teacher_forced_features(self, batch: Batch, state: State | None = None) -> torch.Tensor:
        """All response positions in one pass (causal mask), as :meth:`step` would one by one."""
        if state is None:
            state = self.encode(batch)
        inputs = self.embeddings(batch.decoder_input(self.bos))  # [B, T, E]
        t = inputs.shape[1]
        positions = state["position"].unsqueeze(1) + torch.arange(t, device=inputs.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril().unsqueeze(0)
        out, _ = self.decode(self.embed(inputs, positions), state, causal, cache=False)
        return out
