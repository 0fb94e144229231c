"""Building blocks shared by every generator (Seq2Seq, GPMN, PostKS, PEDNet).

Shapes: B batch, L sequence, M persona sentences, H hidden size, E embedding size, V vocab.
Masks are bool, True = real token/slot.

- :class:`Embeddings` — one table shared by context, persona and response (methods §1),
  initialised from ``data/embeddings/vectors.parquet``.
- :class:`Encoder` — bidirectional GRU over packed sequences; H/2 per direction so
  outputs and final state are H wide and initialise an H-wide decoder directly.
- :class:`Attention` — masked dot or general (bilinear) attention.
- :class:`PersonaEncoder` — the same Encoder over all M sentences of a batch in one call.
- :class:`MemoryHops` — PEDNet's multi-hop memory network (3 hops).
- :class:`DecoderCell` / :class:`Readout` — s_t = GRU([e(y_{t-1}); c_t; ...], s_{t-1})
  and the tied output projection.

Precision: every layer runs under ``torch.autocast`` (bf16 by default, ``train.precision``).
On CPU autocast covers the matmuls (linear, bmm) but not ``aten::gru``, so
:func:`run_gru` runs recurrent layers on bf16 copies of their weights, and the decoder
cell is written with ``F.linear`` (whose bf16 weight casts autocast caches per forward).
Recurrent states, softmaxes and losses stay float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from pipeline.io import InputError, read_parquet

log = logging.getLogger(__name__)

NEG_INF = -1e9  # finite: a fully masked row gives a uniform softmax instead of NaN


def load_embedding_matrix(path: str | Path, tokens: list[str]) -> np.ndarray:
    """``vectors.parquet`` rows -> [V, E] float32 matrix in vocabulary order."""
    table = read_parquet(path, columns=["token", "vector"])
    got = table.column("token").to_pylist()
    if got != list(tokens):
        first = next((i for i, (a, b) in enumerate(zip(got, tokens, strict=False)) if a != b), min(len(got), len(tokens)))
        raise InputError(path, f"tokens differ from vocab.parquet at row {first} ({len(got)} vs {len(tokens)} rows)")
    vectors = table.column("vector").to_pylist()
    dims = {len(v) for v in vectors}
    if len(dims) != 1:
        raise InputError(path, f"vectors of different lengths {sorted(dims)[:5]}")
    return np.asarray(vectors, dtype=np.float32)


def cpu_autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The lower-precision dtype when ``x`` is on CPU inside an enabled CPU autocast region."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return None


def run_gru(gru: nn.GRU, x: torch.Tensor | PackedSequence, h0: torch.Tensor | None = None):
    """``gru(x, h0)``, in bf16 under CPU autocast (2x faster than fp32 on bf16 CPUs, measured
    on PDNet's encoder shapes): CPU autocast has no rule for ``aten::gru``, so the weights
    are cast here (gradients flow back to the fp32 parameters through the cast)."""
    dtype = cpu_autocast_dtype(x.data if isinstance(x, PackedSequence) else x)
    if dtype is None:
        return gru(x, h0)
    params = {name: p.to(dtype) for name, p in gru.named_parameters()}
    x = x.to(dtype)
    out, h = torch.func.functional_call(gru, params, (x, None if h0 is None else h0.to(dtype)))
    return out, h.float()


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, L, D] with each row's first ``lengths[b]`` positions reversed, padding in place
    (its own inverse)."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def bidirectional_gru(gru: nn.GRU, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``gru`` (bidirectional, batch-first) returns on the packed rows of ``x`` [B, L, E]
    (``mask`` [B, L], padding at the end): outputs [B, L, 2H] (zero at padding) and final
    states [layers * 2, B, H] (zero for empty rows), computed on padded tensors.

    Why not packing (for long sequences, Encoder's PADDED_GRU_FROM): on the CPU a packed
    GRU's backward slices every time step out of the whole packed input, and each slice's
    gradient is a zero tensor of the whole input's size, so the backward grows with length x
    tokens. Unpacked, the forward direction never sees the padding (it comes
    after each row's end) and the backward direction reads each row reversed within its
    length, so padding never enters a state either; the same numbers up to float rounding
    (tested against the packed GRU). bf16 under CPU autocast as :func:`run_gru`."""
    b, _, _ = x.shape
    lengths = mask.sum(1)
    dtype, orig = cpu_autocast_dtype(x), x.dtype
    h0 = x.new_zeros(1, b, gru.hidden_size, dtype=dtype or x.dtype)
    last = (lengths - 1).clamp(min=0).view(b, 1, 1).expand(-1, 1, gru.hidden_size)
    finals = []
    for layer in range(gru.num_layers):
        inp = x if dtype is None else x.to(dtype)
        outs = []
        for suffix in ("", "_reverse"):
            weights = [getattr(gru, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if dtype is not None:
                weights = [w.to(dtype) for w in weights]
            run = inp if not suffix else reverse_within(inp, lengths)
            out, _ = torch._VF.gru(run, h0, weights, True, 1, 0.0, gru.training, False, True)
            outs.append((out if not suffix else reverse_within(out, lengths)).to(orig))
        finals += [outs[0].gather(1, last).squeeze(1), outs[1][:, 0]]  # forward at the end, backward at the start
        x = torch.cat(outs, -1)
        if layer < gru.num_layers - 1 and gru.dropout and gru.training:
            x = F.dropout(x, gru.dropout, training=True)
    keep = mask.unsqueeze(-1).to(x.dtype)
    nonempty = (lengths > 0).view(1, b, 1).to(x.dtype)
    return x * keep, torch.stack(finals) * nonempty


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    if mask is not None:
        scores = scores.masked_fill(~mask, NEG_INF)
    return torch.softmax(scores.float(), dim=dim).to(scores.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` where ``mask`` (x: [..., D], mask without D); 0 if empty."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


class Embeddings(nn.Module):
    """Word embeddings shared by context, persona and response; <pad> row fixed at 0."""

    def __init__(self, vocab_size: int, dim: int, pad: int = 0, init: np.ndarray | None = None,
                 freeze: bool = False, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad)
        if init is not None:
            if init.shape != (vocab_size, dim):
                raise ValueError(f"embedding matrix {init.shape} != ({vocab_size}, {dim})")
            with torch.no_grad():
                self.embedding.weight.copy_(torch.from_numpy(init))
                self.embedding.weight[pad].zero_()
        self.embedding.weight.requires_grad_(not freeze)
        self.dropout = nn.Dropout(dropout)

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(ids))


@dataclass
class EncoderConfig:
    input_size: int
    hidden: int  # output width; H/2 per direction
    layers: int = 1
    dropout: float = 0.0


# Sequences at least this long run the bidirectional GRU on padded tensors
# (bidirectional_gru), shorter ones packed: the same numbers, chosen by cost. A packed GRU's
# CPU backward grows with length x tokens; the padded one computes the padding. Measured
# (2 threads, fp32, AVX2 EPYC; benchmarks `encoder`): multi-turn contexts (up to 120 tokens)
# 0.455 -> 0.424 s per Seq2Seq step padded, but PEDNet (persona sentences, congeneric
# contexts) 0.331 -> 0.376 and HRED (utterances) 0.366 -> 0.412 slower.
PADDED_GRU_FROM = 64


class Encoder(nn.Module):
    """Bidirectional GRU over padded sequences, run packed (padding never enters the state).

    Returns outputs [B, L, H] (zero at padding) and the final state [layers, B, H]
    (forward and backward final states concatenated per layer). Empty sequences give
    zeros everywhere.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if config.hidden % 2:
            raise ValueError("encoder hidden size must be even (H/2 per direction)")
        self.config = config
        self.gru = nn.GRU(config.input_size, config.hidden // 2, num_layers=config.layers, batch_first=True,
                          bidirectional=True, dropout=config.dropout if config.layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, length, _ = x.shape
        if length >= PADDED_GRU_FROM:
            out, h = bidirectional_gru(self.gru, x, mask)
        else:
            lengths = mask.sum(1)
            # Packing needs lengths >= 1; empty rows get length 1 and are zeroed below.
            packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
            out, h = run_gru(self.gru, packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
            nonempty = lengths > 0
            if not bool(nonempty.all()):
                out, h = out * nonempty.view(b, 1, 1).to(out.dtype), h * nonempty.view(1, b, 1).to(h.dtype)
        h = h.view(self.config.layers, 2, b, -1).transpose(1, 2).reshape(self.config.layers, b, -1)
        return out, h


class Attention(nn.Module):
    """score(q, k) = q·k (dot) or q·W k (general, Luong); masked softmax over keys.

    query [B, Dq] or [B, T, Dq], keys [B, L, Dk], mask [B, L] ->
    (context [B, Dk] / [B, T, Dk], weights [B, L] / [B, T, L]).
    """

    def __init__(self, query_size: int, key_size: int, kind: str = "dot"):
        super().__init__()
        if kind not in ("dot", "general"):
            raise ValueError(f"attention kind {kind!r}: dot | general")
        if kind == "dot" and query_size != key_size:
            raise ValueError(f"dot attention needs equal sizes, got {query_size} and {key_size}")
        self.proj = nn.Linear(key_size, query_size, bias=False) if kind == "general" else None

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        k = self.proj(keys) if self.proj is not None else keys
        single = query.dim() == 2
        q = query.unsqueeze(1) if single else query
        s = torch.bmm(q, k.transpose(1, 2))
        return s.squeeze(1) if single else s

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None):
        s = self.scores(query, keys)
        m = None if mask is None else (mask if s.dim() == 2 else mask.unsqueeze(1))
        w = masked_softmax(s, m)
        ctx = torch.bmm(w.unsqueeze(1) if w.dim() == 2 else w, keys)
        return (ctx.squeeze(1) if w.dim() == 2 else ctx), w


class PersonaEncoder(nn.Module):
    """Encode the M persona sentences of every example in one batched Encoder call.

    ids/mask [B, M, Lp] -> outputs [B, M, Lp, H], sentence vectors u(p_i) [B, M, H]
    (the last layer's final state). Only non-empty sentences are run through the GRU.
    """

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder  # usually the context encoder itself (shared weights)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m, length, e = emb.shape
        flat_mask = mask.reshape(b * m, length)
        rows = flat_mask.any(1).nonzero(as_tuple=True)[0]
        h_size = self.encoder.config.hidden
        outputs = emb.new_zeros(b * m, length, h_size)
        vectors = emb.new_zeros(b * m, h_size)
        if rows.numel():
            out, h = self.encoder(emb.reshape(b * m, length, e).index_select(0, rows), flat_mask.index_select(0, rows))
            outputs = outputs.index_copy(0, rows, out.to(outputs.dtype))
            vectors = vectors.index_copy(0, rows, h[-1].to(vectors.dtype))
        return outputs.view(b, m, length, h_size), vectors.view(b, m, h_size)


class MemoryHops(nn.Module):
    """End-to-end memory network over persona vectors (PEDNet CDNet, methods §2).

    prob_k = softmax(m_k · u(p_i)), o_k = Σ_i prob_k,i u(p_i), m_{k+1} = o_k + m_k.
    ``bilinear``: score m_k · W u(p_i) with one W shared by all hops (the authors' code).
    ``none_slot``: append a learned memory as candidate M+1, the "no persona" choice
    (its index is M, the last column of the returned logits).
    ``residual``: "previous" m_{k+1} = o_k + m_k (the paper); "query" m_{k+1} = o_k + m_1,
    each hop's query is its read-out plus the original query (the authors' code).

    memory [B, M, H], mask [B, M], query m_1 [B, H] -> (logits per hop [hops][B, M(+1)],
    final m [B, H]). Use logits[-1] for selection/cross-entropy.
    """

    def __init__(self, hidden: int, hops: int = 3, bilinear: bool = False, none_slot: bool = False,
                 residual: str = "previous"):
        super().__init__()
        if residual not in ("previous", "query"):
            raise ValueError(f"memory residual {residual!r}: previous | query")
        self.hops = hops
        self.residual = residual
        self.proj = nn.Linear(hidden, hidden, bias=False) if bilinear else None
        self.none_memory = nn.Parameter(torch.zeros(hidden).normal_(0, 0.1)) if none_slot else None

    def with_none(self, memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.none_memory is None:
            return memory, mask
        b = memory.shape[0]
        none = self.none_memory.to(memory.dtype).view(1, 1, -1).expand(b, 1, -1)
        return torch.cat([memory, none], 1), torch.cat([mask, mask.new_ones(b, 1)], 1)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor,
                bias: torch.Tensor | None = None):
        """``bias`` [B, M]: a fixed score added to every hop's logits of the real slots
        (PEDNet's selection prior); the "no persona" slot gets none."""
        memory, mask = self.with_none(memory, mask)
        keys = self.proj(memory) if self.proj is not None else memory
        if bias is not None and bias.shape[1] < memory.shape[1]:
            bias = F.pad(bias, (0, memory.shape[1] - bias.shape[1]))
        m = query
        all_logits = []
        for _ in range(self.hops):
            logits = torch.bmm(keys, m.unsqueeze(2)).squeeze(2)
            if bias is not None:  # in float32: bf16 would round a prior of ~4 to steps of 0.03
                logits = logits.float() + bias.float()
            logits = logits.masked_fill(~mask, NEG_INF)
            prob = torch.softmax(logits.float(), -1).to(memory.dtype)
            o = torch.bmm(prob.unsqueeze(1), memory).squeeze(1)
            m = o + (query if self.residual == "query" else m)
            all_logits.append(logits)
        return all_logits, m


@dataclass
class DecoderConfig:
    emb_dim: int
    hidden: int
    context_sizes: tuple[int, ...]  # widths of the extra inputs c_t, c_t^p, ... joined to e(y_{t-1})
    layers: int = 1
    dropout: float = 0.0


class DecoderCell(nn.Module):
    """One decoder step s_t = GRU([e(y_{t-1}); c_t; extra...], s_{t-1}), ``layers`` stacked
    GRU cells (dropout between layers, as nn.GRU).

    prev_emb [B, E], contexts list of [B, D_i], state [layers, B, H] -> (output [B, H], state).
    The cell is written with ``F.linear`` so that CPU autocast runs its matmuls in bf16
    (one cached weight cast per forward); the state itself stays float32.
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        sizes = [config.emb_dim + sum(config.context_sizes)] + [h] * (config.layers - 1)
        self.cells = nn.ModuleList(nn.GRUCell(n, h) for n in sizes)
        self.dropout = nn.Dropout(config.dropout if config.layers > 1 else 0.0)

    @staticmethod
    def gru_cell(cell: nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gi = F.linear(x, cell.weight_ih, cell.bias_ih)
        gh = F.linear(h, cell.weight_hh, cell.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (n + z * (h - n)).to(h.dtype)  # = (1 - z) n + z h

    def forward(self, prev_emb: torch.Tensor, contexts: list[torch.Tensor], state: torch.Tensor):
        x = torch.cat([prev_emb, *(c.to(prev_emb.dtype) for c in contexts)], dim=-1)
        states = []
        for i, cell in enumerate(self.cells):
            h = self.gru_cell(cell, x if i == 0 else self.dropout(x), state[i])
            states.append(h)
            x = h
        return x, torch.stack(states)


class Readout(nn.Module):
    """Output distribution from [s_t; c_t; ...], tied to the word embeddings.

    logits = tanh(W [s_t; c_t; ...]) · Eᵀ + b: the linear layer maps the decoder features
    to the embedding size E, so the output matrix IS the (shared) embedding matrix whatever
    H is ("tie via a projection"). ``tie=False`` gives an untied Linear(E -> V) instead.
    Works on [B, D] or [B, T, D] inputs.
    """

    def __init__(self, in_size: int, embeddings: Embeddings, tie: bool = True, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(in_size, embeddings.dim)
        self.dropout = nn.Dropout(dropout)
        self.embeddings = embeddings if tie else None
        v = embeddings.weight.shape[0]
        self.out = None if tie else nn.Linear(embeddings.dim, v, bias=False)
        self.bias = nn.Parameter(torch.zeros(v))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.tanh(self.proj(features)))
        weight = self.embeddings.weight if self.embeddings is not None else self.out.weight
        return F.linear(h, weight, self.bias)


def init_decoder_state(encoder_state: torch.Tensor, decoder_layers: int) -> torch.Tensor:
    """Encoder final state [Le, B, H] -> decoder initial state [Ld, B, H] (last layers,
    or the top layer repeated when the decoder is deeper)."""
    le = encoder_state.shape[0]
    if le >= decoder_layers:
        return encoder_state[le - decoder_layers :]
    return torch.cat([encoder_state, encoder_state[-1:].expand(decoder_layers - le, -1, -1)], 0)
