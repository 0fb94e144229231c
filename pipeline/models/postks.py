"""PostKS, posterior knowledge selection (Lian et al. 2019), with persona sentences as the
knowledge (PEDNet Table 2's third baseline; methods §2).

The context X, every persona sentence p_i and (in training) the response Y go through the
shared encoder: u(X), u(p_i), u(Y) are last-layer final states.

- prior      p(k = p_i | X)    = softmax_i(u(X) · u(p_i))
- posterior  p(k = p_i | X, Y) = softmax_i(W [u(X); u(Y)] · u(p_i))
- training: the decoder gets u(p_k) of a hard Gumbel-softmax sample from the posterior
  (straight-through, temperature ``gumbel_tau``, as Baidu's PostKS code: the selection is
  differentiable and the posterior learns from NLL and BOW); evaluation, validation and
  decoding: the prior's argmax.
- loss = NLL + KL(posterior ‖ prior) + BOW, where BOW is the mean −log p_bow(y_t | u(p_k))
  over the response words (without ``</s>``). For the first ``bow_warmup_epochs`` epochs
  the loss is BOW alone (the authors' Persona-Chat port: 5 epochs).

Decisions where the papers are silent:
- The decoder reads the selected sentence vector u(p_k) at every step (an extra GRU input
  and readout feature), as PostKS feeds its selected knowledge vector; it does not attend
  over the sentence's words.
- ``kl_detach_posterior`` (default true, Baidu's code): the KL term trains the prior only.
- The BOW predictor is tanh(W u(p_k)) through its own output matrix (``bow_tied: false``,
  as Baidu's separate BOW layer), so the BOW loss does not reshape the decoder's tied
  output matrix (the word embeddings); ``bow_tied: true`` shares it.
- The persona encoder is the context encoder (shared weights).
- ``persona_correct`` counts the prior's argmax against the optimal-persona label, over
  examples whose label is not None (PostKS has no "no persona" choice); in validation
  ``posterior_correct`` counts the posterior's (``posterior_acc`` in the curves: the prior
  learns from it through the KL, so a posterior at chance leaves the prior at chance).
- ``test_selection`` (decoding only; a diagnostic, never a system): ``prior`` (the paper),
  ``label`` (the optimal-persona label where there is one, else the prior: an oracle that
  shows how much P-F1 the decoder gets from a right selection) or ``posterior`` (the
  posterior, which reads the gold response: the test-time leak of Baidu's released generator).
- ``posterior_query``: ``concat`` (the paper: W [u(X); u(Y)], a new randomly initialised
  map) or ``response`` (Baidu's code: u(Y) alone, informative from the first step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import PERSONA, PERSONA_LABEL, Batch
from pipeline.models import ModelContext, State, register
from pipeline.models.layers import NEG_INF, Attention, PersonaEncoder, Readout
from pipeline.models.seq2seq import Seq2Seq

DEFAULTS = {"bow_warmup_epochs": 1, "gumbel_tau": 0.1, "kl_detach_posterior": True, "bow_tied": False,
            "posterior_query": "concat", "test_selection": "prior"}
TEST_SELECTIONS = ("prior", "label", "posterior")


@register("postks")
class PostKS(Seq2Seq):
    inputs = frozenset({PERSONA, PERSONA_LABEL})

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        h = self.params["hidden"]
        self.persona_encoder = PersonaEncoder(self.encoder)
        self.prior_attention = Attention(h, h, "dot")
        self.posterior_query = nn.Linear(2 * h, h)
        self.bow = Readout(h, self.embeddings, tie=self.params["bow_tied"], dropout=self.params["dropout"])

    @property
    def warmup_epochs(self) -> int:
        return int(self.params["bow_warmup_epochs"])

    def extra_context_sizes(self) -> list[int]:
        return [self.params["hidden"]]

    def encode_extra(self, batch: Batch, state: State) -> State:
        _, u_p = self.persona_encoder(self.embeddings(batch.persona), batch.persona_mask)  # [B, M, H]
        exists = batch.persona_exists
        u_x = state["hidden"][:, -1]  # the decoder's s_0 top layer = u(X)
        prior = self.prior_attention.scores(u_x, u_p).masked_fill(~exists, NEG_INF)
        state = {**state, "prior_logits": prior}
        if self.training:
            posterior = self.posterior_logits(batch, u_x, u_p)
            onehot = F.gumbel_softmax(posterior.float(), tau=self.params["gumbel_tau"], hard=True).to(u_p.dtype)
            state["posterior_logits"] = posterior
        else:
            onehot = F.one_hot(self.test_choice(batch, prior, u_x, u_p), prior.shape[1]).to(u_p.dtype)
        state["knowledge"] = torch.bmm(onehot.unsqueeze(1), u_p).squeeze(1)  # u(p_k) [B, H]
        state["selected"] = onehot.argmax(-1)
        return state

    def test_choice(self, batch: Batch, prior: torch.Tensor, u_x: torch.Tensor, u_p: torch.Tensor) -> torch.Tensor:
        """[B] the sentence decoding reads: the prior's argmax, or an oracle's (``test_selection``)."""
        how = self.params["test_selection"]
        if how not in TEST_SELECTIONS:
            raise ValueError(f"postks.test_selection {how!r}: {' | '.join(TEST_SELECTIONS)}")
        choice = prior.argmax(-1)
        if how == "label" and batch.persona_label is not None:
            choice = torch.where(batch.persona_label >= 0, batch.persona_label, choice)
        elif how == "posterior":
            choice = self.posterior_logits(batch, u_x, u_p).argmax(-1)
        return choice

    def posterior_logits(self, batch: Batch, u_x: torch.Tensor, u_p: torch.Tensor) -> torch.Tensor:
        """p(k | X, Y)'s logits over the persona sentences (training; validation's posterior_acc)."""
        _, h_y = self.encoder(self.embeddings(batch.response), batch.response_mask)
        if self.params["posterior_query"] == "response":  # Baidu's code: u(Y) alone, no new weights
            query = h_y[-1]
        else:  # the paper: W [u(X); u(Y)]
            query = self.posterior_query(torch.cat([u_x, h_y[-1]], -1))
        return self.prior_attention.scores(query, u_p).masked_fill(~batch.persona_exists, NEG_INF)

    def extra_contexts(self, state: State, query: torch.Tensor) -> list[torch.Tensor]:
        return [state["knowledge"]]

    def selected_persona(self, state: State) -> torch.Tensor:
        return state["selected"]

    def bow_loss(self, batch: Batch, knowledge: torch.Tensor) -> torch.Tensor:
        """Mean −log p_bow(y_t) over the response's words (``</s>`` and padding excluded)."""
        log_p = F.log_softmax(self.bow(knowledge).float(), -1)  # [B, V]
        words = batch.response_mask & (batch.response != self.eos)
        nll = -log_p.gather(1, batch.response) * words
        return nll.sum() / words.sum().clamp(min=1)

    def kl(self, state: State) -> torch.Tensor:
        """KL(posterior ‖ prior), mean over the batch."""
        log_prior = F.log_softmax(state["prior_logits"].float(), -1)
        log_post = F.log_softmax(state["posterior_logits"].float(), -1)
        if self.params["kl_detach_posterior"]:
            log_post = log_post.detach()
        return F.kl_div(log_prior, log_post, log_target=True, reduction="none").sum(-1).mean()

    def loss(self, batch: Batch, epoch: int | None = None, **ctx) -> dict[str, torch.Tensor]:
        state = self.encode(batch)
        out: dict[str, torch.Tensor] = {}
        if batch.persona_label is not None:
            labelled = batch.persona_label >= 0
            out["persona_correct"] = ((state["prior_logits"].argmax(-1) == batch.persona_label) & labelled).sum()
            out["persona_total"] = labelled.sum()
        if not self.training:  # validation: what decoding does (prior selection), NLL only
            if batch.persona_label is not None:  # and whether the posterior it learns from selects at all
                _, u_p = self.persona_encoder(self.embeddings(batch.persona), batch.persona_mask)
                posterior = self.posterior_logits(batch, state["hidden"][:, -1], u_p)
                out["posterior_correct"] = ((posterior.argmax(-1) == batch.persona_label) & labelled).sum()
            return {**self.nll_terms(batch, state), **out}
        bow = self.bow_loss(batch, state["knowledge"])
        kl = self.kl(state)
        out.update(bow=bow.detach(), kl=kl.detach())
        if epoch is not None and epoch < self.params["bow_warmup_epochs"]:
            # BOW-only warm-up: the decoder does not run (its NLL is not needed for the loss).
            zero = bow.new_zeros(())
            return {"loss": bow, "nll_sum": zero, "n_tokens": zero, **out}
        terms = self.nll_terms(batch, state)
        return {**terms, "loss": terms["loss"] + kl + bow, **out}
