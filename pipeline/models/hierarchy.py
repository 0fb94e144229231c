"""What the hierarchical generators (HRED, HRAN) share: the multi-turn context split into
utterances on ``<eot>``, and the word-level encoder run over every utterance at once.

The dataset hands every generator one flat context (``batch.query``: with ``context:
history`` the turns joined by ``<eot>``, pipeline.preprocessing.text.gcl_context, truncated to the last
``max_context_tokens`` tokens, so the oldest turn may be cut). :func:`split_utterances`
cuts it back into turns inside the model, so the data pipeline and its cached batches are
the same for every generator. The ``<eot>`` id needs no plumbing: ``Vocab`` refuses a
vocabulary that does not start with ``schema.SPECIALS``, so ``<eot>`` is always id
``SPECIALS.index(EOT)``.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline import schema
from pipeline.dataset import Batch
from pipeline.models import Generator, ModelContext
from pipeline.models.layers import Encoder, EncoderConfig, PersonaEncoder

EOT_ID = schema.SPECIALS.index(schema.EOT)  # fixed by Vocab (specials first, in order)


def split_utterances(ids: torch.Tensor, mask: torch.Tensor, eot: int = EOT_ID,
                     pad: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flat context [B, L] (``mask`` True = real token) -> its utterances, oldest first:
    ids [B, U, Lu], mask [B, U, Lu] and ``exists`` [B, U] (True = a real utterance).

    ``<eot>`` separates utterances and is dropped. Empty utterances (a leading, trailing or
    repeated ``<eot>``) are dropped too, so the real utterances of a row are its first
    ``exists.sum()`` slots; a row without ``<eot>`` is one utterance; a row without any
    token (all padding) has none. U and Lu are the batch's maxima, at least 1.
    """
    b, length = ids.shape
    is_eot = (ids == eot) & mask
    keep = mask & ~is_eot
    segment = is_eot.long().cumsum(1)  # raw utterance index of every position
    n_raw = int(segment.max()) + 1 if length else 1
    sizes_raw = torch.zeros(b, n_raw, dtype=torch.long, device=ids.device).scatter_add_(1, segment, keep.long())
    nonempty = sizes_raw > 0
    compact = nonempty.long().cumsum(1) - 1  # raw index -> index among the non-empty utterances
    utt = compact.gather(1, segment)  # [B, L] (meaningful where keep)
    rank = keep.long().cumsum(1) - 1  # index of a kept token among its row's kept tokens
    raw_start = sizes_raw.cumsum(1) - sizes_raw  # kept tokens before each raw utterance
    pos = rank - raw_start.gather(1, segment)  # position within its utterance
    n_utt = nonempty.sum(1)
    u_max = max(int(n_utt.max()) if b else 0, 1)
    lu_max = max(int(sizes_raw.max()) if b else 0, 1)
    rows, cols = keep.nonzero(as_tuple=True)
    u, pos = utt[rows, cols], pos[rows, cols]
    out = ids.new_full((b, u_max, lu_max), pad)
    out_mask = torch.zeros(b, u_max, lu_max, dtype=torch.bool, device=ids.device)
    out[rows, u, pos] = ids[rows, cols]
    out_mask[rows, u, pos] = True
    exists = torch.arange(u_max, device=ids.device).unsqueeze(0) < n_utt.unsqueeze(1)
    return out, out_mask, exists


class HierarchicalGenerator(Generator):
    """Base of HRED and HRAN: the shared bidirectional word-level :class:`Encoder` over each
    utterance (H/2 per direction, ``layers`` deep; one batched call through
    :class:`PersonaEncoder`), and the decoder's initial state s_0 = tanh(W c + b) from a
    context vector c [B, H] (Serban et al. 2016), one H-wide slice per decoder layer."""

    eot: int = EOT_ID

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__(params, ctx)
        p = self.params
        e, h, layers = p["emb_dim"], p["hidden"], p["layers"]
        self.word_encoder = PersonaEncoder(Encoder(EncoderConfig(e, h, layers, p["dropout"])))
        self.init_state = nn.Linear(h, layers * h)

    def encode_utterances(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Word states [B, U, Lu, H], utterance vectors (the word encoder's final state)
        [B, U, H], word mask [B, U, Lu] and utterance mask [B, U] of ``batch.query``."""
        ids, mask, exists = split_utterances(batch.query, batch.query_mask, self.eot, self.pad)
        words, vectors = self.word_encoder(self.embeddings(ids), mask)
        return words, vectors, mask, exists

    def initial_hidden(self, context: torch.Tensor) -> torch.Tensor:
        """c [B, H] -> s_0 [B, layers, H] (float32, like every recurrent state)."""
        b, h = context.shape
        return torch.tanh(self.init_state(context)).float().view(b, self.params["layers"], h)
