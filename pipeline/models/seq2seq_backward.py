"""The backward model p(S | T) of MMI-bidi (Li et al. 2016a) and of DeepRL's semantic
coherence reward (Li et al. 2016b): a Seq2Seq trained on swapped pairs, reading the
response T and generating the source S.

It is trained and scored on the ordinary (context, response) batches: :meth:`swap` turns
each pair around inside ``loss`` and ``sequence_log_prob``, so the one training loop, its
validation NLL (= −log p(S | T) per source token) and ``best.pt`` need nothing special.

S (``source``): ``last_turn`` (default) is the message T answers, the context's last
utterance (the text after its last ``<eot>``): Li et al.'s single-turn S, and q_i of
DeepRL's coherence reward; ``history`` is the whole context as the forward model reads it
(up to ``max_context_tokens``), a longer and costlier target.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.utils.rnn import pad_sequence

from pipeline.dataset import Batch
from pipeline.models import ModelContext, register
from pipeline.models.seq2seq import Seq2Seq
from pipeline.schema import EOT, SPECIALS

EOT_ID = SPECIALS.index(EOT)  # pipeline.dataset.Vocab keeps the specials first, in this order
DEFAULTS = {"source": "last_turn"}
SOURCES = ("last_turn", "history")


def context_turns(ids: torch.Tensor, mask: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per row, the context's utterances (1-D id tensors, oldest first), split at ``<eot>``."""
    out = []
    for row, m in zip(ids, mask, strict=True):
        tokens = row[m]
        cuts = (tokens == EOT_ID).nonzero(as_tuple=True)[0].tolist()
        bounds = [-1, *cuts, len(tokens)]
        out.append([tokens[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a + 1])
    return out


def pad_rows(rows: list[torch.Tensor], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged 1-D id tensors -> [B, L] ids (at least one column) and the bool mask."""
    rows = [r if r.numel() else torch.zeros(0, dtype=torch.long, device=device) for r in rows]
    ids = pad_sequence([*rows, torch.zeros(1, dtype=torch.long, device=device)], batch_first=True,
                       padding_value=pad)[:-1]
    return ids, ids != pad


@register("seq2seq_backward")
class Seq2SeqBackward(Seq2Seq):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        if self.params["source"] not in SOURCES:
            raise ValueError(f"seq2seq_backward.source {self.params['source']!r}: one of {SOURCES}")

    def swap(self, batch: Batch) -> Batch:
        """(context, response) -> (response words, S + ``</s>``): T becomes the encoder's
        input, S the teacher-forced target."""
        device = batch.response.device
        words = [r[m & (r != self.eos)] for r, m in zip(batch.response, batch.response_mask, strict=True)]
        if self.params["source"] == "history":
            sources = [q[m] for q, m in zip(batch.query, batch.query_mask, strict=True)]
        else:
            sources = [t[-1] if t else torch.zeros(0, dtype=torch.long, device=device)
                       for t in context_turns(batch.query, batch.query_mask)]
        eos = torch.tensor([self.eos], device=device)
        query, query_mask = pad_rows(words, self.pad, device)
        response, response_mask = pad_rows([torch.cat([s, eos]) for s in sources], self.pad, device)
        return dataclasses.replace(batch, query=query, query_mask=query_mask, response=response,
                                   response_mask=response_mask)

    def loss(self, batch: Batch, **ctx) -> dict[str, torch.Tensor]:
        return super().loss(self.swap(batch), **ctx)

    def sequence_log_prob(self, batch: Batch, **ctx) -> torch.Tensor:
        """[B] log p(S | T) of each pair's source given its response."""
        return super().sequence_log_prob(self.swap(batch), **ctx)

    def source_tokens(self, batch: Batch) -> torch.Tensor:
        """[B] tokens of each pair's target S (``</s>`` included), to normalise by."""
        return self.swap(batch).response_mask.sum(1)
