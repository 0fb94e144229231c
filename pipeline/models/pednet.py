"""PEDNet = CDNet + PDNet on one backbone, trained alternately (methods §2).

Both share the embeddings, the encoder (context, masked contexts and, with
``persona_encoder: shared``, the paper's reading, persona sentences; ``separate`` gives
persona sentences their own encoder, as the authors' code does) and the decoder s_t = GRU([e(y_{t-1}); c_t; c_t^p], s_{t-1}) with readout from
[s_t; c_t; c_t^p]; c_t^p is attention over the word encodings h(p) of one persona sentence.

CDNet (validation, test, decoding):
- z = u(X) + Linear(mean of the specific words' embeddings) (the authors' code form of
  [u(X); q]); the second term is zero when an example has no specific word.
- a 3-hop memory network over u(p_1..p_M) plus an (M+1)-th learned "no persona" slot:
  one shared bilinear score, each hop's query = its read-out + z (``hop_residual: query``,
  the authors' code; ``previous`` is the paper's m_{k+1} = o_k + m_k).
- ``selection_prior: query_cosine`` (ours, not in either source): every hop's score of
  p_i gains w·cos(X, p_i), the cosine of the pretrained labeller's encoder between the
  query and the sentence (data/persona_labels, column query_similarities), w learned from
  ``prior_scale``. Why: the from-scratch selector stays near chance on this slice (its
  valid persona CE barely leaves ln(M+1)), while that cosine alone picks the label's
  sentence for 41% of labelled test turns. ``none`` is the paper's selector.
  ``bilinear`` (ours, the PEDNet issue's item 7): the bias is instead the logits of a
  selector fitted on the frozen labeller vectors, s·u(X)ᵀ W u(p_i)
  (pipeline.preprocessing.persona_prior, data/persona_prior), which picks the label for 42%
  of labelled test turns; w starts at ``prior_scale`` (1 starts CDNet at that selector).
- p̂ = argmax of the last hop, at training time too (not teacher-forced, as the code);
  ``select_none``: whether p̂ may be the "no persona" slot (then the decoder's persona
  context is zero). Default false, the paper's p̂ = argmax over the persona sentences: the
  slot stays a cross-entropy target (the None label) but is never selected. With true
  (the authors' code, whose "None" is a sentence of the persona) the slot won for 74% of
  the shared slice's test turns against 30% None labels, and P-F1 fell from 0.123 to 0.062.
- loss = ``nll_weight``·NLL + ``persona_weight``·CE(last hop, optimal-persona label), 0.3 /
  0.7 in the code; the None label is the target M (the "no persona" slot).

PDNet (training only): the K congeneric masked contexts X̃_1..X̃_K (the example's own
first), the labelled optimal persona p*; s_0 = mean_i u(X̃_i), c̃_t = mean_i attention
(s_{t-1}, h(X̃_i)), c_t^{p*} = attention over h(p*) (zero for the None label); loss NLL.

Alternation: each training batch is one task, PDNet with probability ``gamma``, decided
by a generator seeded with (``task_seed``, step) so that a run, its resume and every
DistributedDataParallel rank make the same choices.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import (
    BILINEAR_PRIOR,
    CONGENERIC,
    PERSONA,
    PERSONA_LABEL,
    PERSONA_PRIOR,
    SPECIFIC_WORDS,
    Batch,
    DataConfig,
)
from pipeline.models import ModelContext, State, register
from pipeline.models.layers import (
    Attention,
    MemoryHops,
    PersonaEncoder,
    init_decoder_state,
    masked_mean,
    masked_softmax,
)
from pipeline.models.seq2seq import Seq2Seq

DEFAULTS = {
    "k": 15,  # congeneric contexts per example (own X~ + K-1 retrieved); the paper's best
    "gamma": 0.5,  # probability that a training batch is a PDNet batch
    "hops": 3,
    "hop_residual": "query",  # query (authors' code) | previous (paper)
    "nll_weight": 0.3,
    "persona_weight": 0.7,
    "task_seed": 1,
    "select_none": False,  # true: p̂ may be the "no persona" slot (authors' code)
    "persona_encoder": "shared",  # shared: the context encoder (paper) | separate: its own GRU (authors' code)
    "selection_prior": "none",  # none (paper) | query_cosine: + w·cos(X, p_i) of the labeller | bilinear (ours)
    "prior_scale": 10.0,  # initial w of the prior (learned)
}
# selection_prior -> the input that holds its per-sentence scores (none: no input)
SELECTION_PRIORS = {"none": None, "query_cosine": PERSONA_PRIOR, "bilinear": BILINEAR_PRIOR}

CDNET, PDNET = "cdnet", "pdnet"


def choose_task(step: int, gamma: float, seed: int = 1) -> str:
    """The task of training batch ``step``: PDNet with probability ``gamma``."""
    return PDNET if np.random.default_rng([seed, step]).random() < gamma else CDNET


@register("pednet")
class PEDNet(Seq2Seq):
    inputs = frozenset({PERSONA, SPECIFIC_WORDS, PERSONA_LABEL, CONGENERIC})

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        p = self.params
        e, h = p["emb_dim"], p["hidden"]
        if p["persona_encoder"] not in ("shared", "separate"):
            raise ValueError(f"pednet.persona_encoder {p['persona_encoder']!r}: shared | separate")
        # separate: same architecture and initial weights as the context encoder, trained apart
        self.persona_encoder = PersonaEncoder(self.encoder if p["persona_encoder"] == "shared"
                                              else copy.deepcopy(self.encoder))
        self.key_linear = nn.Linear(e, h)  # specific words -> persona-aware query term
        self.memory = MemoryHops(h, hops=p["hops"], bilinear=True, none_slot=True, residual=p["hop_residual"])
        self.persona_attention = Attention(h, h, p["attention"])
        if p["selection_prior"] not in SELECTION_PRIORS:
            raise ValueError(f"pednet.selection_prior {p['selection_prior']!r}: {' | '.join(SELECTION_PRIORS)}")
        if SELECTION_PRIORS[p["selection_prior"]]:
            self.inputs = self.inputs | {SELECTION_PRIORS[p["selection_prior"]]}
            self.prior_scale = nn.Parameter(torch.tensor(float(p["prior_scale"])))

    @classmethod
    def data_config(cls, params: dict) -> DataConfig:
        params = {**DEFAULTS, **params}
        prior = SELECTION_PRIORS.get(params["selection_prior"])
        inputs = cls.inputs | ({prior} if prior else set())
        return DataConfig.from_params({**params, "congeneric_k": params["k"]}, inputs)

    # decoder hooks -----------------------------------------------------------------------
    def extra_context_sizes(self) -> list[int]:
        return [self.params["hidden"]]

    def extra_contexts(self, state: State, query: torch.Tensor) -> list[torch.Tensor]:
        c_p, _ = self.persona_attention(query, state["persona_words"], state["persona_words_mask"])
        return [c_p * state["persona_on"].unsqueeze(1).to(c_p.dtype)]

    def attend_context(self, state: State, query: torch.Tensor) -> torch.Tensor:
        ctx = state["context"]
        if ctx.dim() == 3:  # CDNet: h(X)
            return super().attend_context(state, query)
        # PDNet: c~_t = mean over i of attention over h(X~_i). Scored as one [B, K*L] row per
        # example (a softmax per context), which is much faster than B*K tiny attentions.
        b, k, length, h = ctx.shape
        flat = ctx.reshape(b, k * length, h)
        w = masked_softmax(self.attention.scores(query, flat).view(b, k, length), state["context_mask"])
        return torch.bmm(w.reshape(b, 1, k * length) / k, flat).squeeze(1)

    # persona ----------------------------------------------------------------------------
    def encode_persona(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Word encodings h(p_i) [B, M, Lp, H] and sentence vectors u(p_i) [B, M, H]."""
        return self.persona_encoder(self.embeddings(batch.persona), batch.persona_mask)

    def with_persona(self, state: State, words: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> State:
        """The decoder's persona: word encodings [B, Lp, H] / mask of sentence ``index`` [B]
        (-1 = none: zero persona context)."""
        on = index >= 0
        return {**state, "persona_words": words, "persona_words_mask": mask & on[:, None], "persona_on": on,
                "selected": torch.where(on, index, torch.full_like(index, -1))}

    # CDNet ------------------------------------------------------------------------------
    def persona_query(self, batch: Batch, u_x: torch.Tensor) -> torch.Tensor:
        """z = u(X) + Linear(mean e(specific words)); the second term is 0 without any."""
        has = batch.specific_words_mask.any(1, keepdim=True)
        q = self.key_linear(masked_mean(self.embeddings(batch.specific_words), batch.specific_words_mask, 1))
        return u_x + q * has.to(q.dtype)

    def encode(self, batch: Batch) -> State:
        """CDNet (the test-time network)."""
        state = super().encode(batch)  # h(X), s_0
        words, u_p = self.encode_persona(batch)
        z = self.persona_query(batch, state["hidden"][:, -1])
        prior = self.prior_scale * batch.persona_prior if SELECTION_PRIORS[self.params["selection_prior"]] else None
        logits, _ = self.memory(z, u_p, batch.persona_exists, bias=prior)
        last = logits[-1]  # [B, M+1]; column M = "no persona"
        # select_none=false still trains the None slot as a target but never selects it.
        pick = (last if self.params["select_none"] else last[:, :-1]).argmax(-1)
        rows = torch.arange(batch.size, device=pick.device)
        i = pick.clamp(max=words.shape[1] - 1)  # the "no persona" pick M reads a dummy row, masked off
        index = torch.where(pick == last.shape[1] - 1, torch.full_like(pick, -1), pick)
        state = self.with_persona(state, words[rows, i], batch.persona_mask[rows, i], index)
        return {**state, "persona_logits": last}

    def selected_persona(self, state: State) -> torch.Tensor:
        return state["selected"]

    def persona_target(self, batch: Batch, n_slots: int) -> torch.Tensor:
        label = batch.persona_label
        return torch.where(label >= 0, label, torch.full_like(label, n_slots - 1))

    def cdnet_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        state = self.encode(batch)
        terms = self.nll_terms(batch, state)
        logits = state["persona_logits"]
        target = self.persona_target(batch, logits.shape[1])
        ce = F.cross_entropy(logits.float(), target)
        p = self.params
        return {**terms, "loss": p["nll_weight"] * terms["loss"] + p["persona_weight"] * ce,
                "persona_ce": ce.detach(), "persona_correct": (state["selected"] == batch.persona_label).sum(),
                "persona_total": torch.tensor(batch.size, device=target.device)}

    # PDNet ------------------------------------------------------------------------------
    def encode_pdnet(self, batch: Batch) -> State:
        ids, mask = batch.congeneric, batch.congeneric_mask
        b, k, length = ids.shape
        # Retrieved contexts repeat within a batch (~20% on the real slice): encode each once.
        uniq, inverse = torch.unique(ids.reshape(b * k, length), dim=0, return_inverse=True)
        out, h = self.encoder(self.embeddings(uniq), uniq != self.pad)
        out, h = out.index_select(0, inverse), h.index_select(1, inverse)
        exists = mask.any(-1)  # [B, K]
        h_mean = masked_mean(h.view(h.shape[0], b, k, -1), exists.unsqueeze(0).expand(h.shape[0], -1, -1), 2)
        s0 = init_decoder_state(h_mean, self.params["layers"]).transpose(0, 1)
        state = {"hidden": s0, "context": out.view(b, k, length, -1), "context_mask": mask}
        # Only p* is needed: encode that one sentence per example (empty for None -> zeros).
        label = batch.persona_label
        rows, i = torch.arange(b, device=ids.device), label.clamp(min=0)
        p_mask = batch.persona_mask[rows, i] & (label >= 0)[:, None]
        words, _ = self.encoder(self.embeddings(batch.persona[rows, i]), p_mask)
        return self.with_persona(state, words, p_mask, label)

    def pdnet_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.nll_terms(batch, self.encode_pdnet(batch))

    # Generator --------------------------------------------------------------------------
    def loss(self, batch: Batch, step: int | None = None, task: str | None = None, **ctx) -> dict[str, torch.Tensor]:
        """Training: the task of this step (or ``task``); evaluation: CDNet."""
        if task is None:
            task = choose_task(step or 0, self.params["gamma"], self.params["task_seed"]) if self.training else CDNET
        if task == PDNET:
            return {**self.pdnet_loss(batch), "task_pdnet": torch.ones(())}
        if task == CDNET:
            return {**self.cdnet_loss(batch), "task_pdnet": torch.zeros(())}
        raise ValueError(f"task {task!r}: {CDNET} | {PDNET}")
