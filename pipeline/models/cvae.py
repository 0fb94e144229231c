"""CVAE: a conditional variational auto-encoder on the Seq2Seq backbone (Zhao et al. 2017,
"Learning Discourse-level Diversity for Neural Dialog Models using Conditional Variational
Autoencoders"; GCL Table 3's CVAE row: KL annealing + the bag-of-words loss).

c = u(X), the context encoder's final state (the Seq2Seq encoder over the multi-turn
history); x = u(Y), the same encoder over the response (shared weights).

- recognition network q(z | x, c) = N(μ, σ²I), [μ; log σ²] = W_r [x; c] + b_r (linear, as
  Zhao et al.);
- prior network p(z | c) = N(μ', σ'²I), [μ'; log σ'²] = MLP_p(c) (one tanh hidden layer);
- decoder: s_0 = W_i [c; z] + b_i (every layer), and z joins the decoder's input and
  readout features at every step (an extra context beside the attention read-out c_t);
- bag-of-words loss: log p(x_bow | z, c) = Σ_t log f_{y_t}, f = softmax(MLP_b([z; c]))
  over the response's words (``</s>`` excluded), its own output layer (``bow_tied``);
- loss per example = NLL(y | z, c) + w(t) KL(q ‖ p) + bow_weight · BOW, with the linear KL
  annealing w(t) = min(1, t / kl_anneal_steps) over optimizer steps (Zhao et al.: 0 → 1
  over 10,000 batches, about 1.5 epochs of their Switchboard training set; here
  params.yaml's 345 steps are 3 epochs of the slice, where MLE converges in 6-8), the
  annealing being the loop's warm-up (:attr:`CVAE.warmup_epochs`); summed over the batch
  and divided by its response tokens, so the three terms keep Zhao et al.'s per-sequence proportions while the loss has the scale of
  the other generators' per-token NLL.

Choices where the paper leaves room (or differs from this backbone):
- Attention stays (the backbone is attentional Seq2Seq; Zhao et al.'s decoder has none);
  feeding z at every step as well as in s_0 keeps the decoder from ignoring it.
- Validation (eval mode, the loop's ``nll``): z = μ of the recognition network, and the
  reported ``nll_sum`` is Σ NLL + Σ KL (full weight), the negative ELBO at the mean: the
  perplexity is an upper bound, not comparable with the deterministic models' one.
- Decoding (``encode``): z = μ' + σ' ε from the prior, with ε drawn per test row from a
  generator seeded by (``decode_seed``, row position): generations do not depend on the
  batch size and are identical on every rerun. ``sequence_log_prob`` (the generate stage's
  diagnostic) uses that prior sample too.

:class:`LatentSeq2Seq` holds what CVAE and DialogWAE (pipeline/models/dialogwae.py) share:
the response encoding, the z-conditioned decoder and the per-row decoding noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import Batch
from pipeline.models import ModelContext, State, register
from pipeline.models.layers import Readout
from pipeline.models.seq2seq import Seq2Seq

DEFAULTS = {"latent": 64, "kl_anneal_steps": 345, "bow_weight": 1.0, "bow_tied": False, "decode_seed": 1}


def kl_weight(step: int | None, anneal_steps: int) -> float:
    """Linear KL annealing: min(1, step / anneal_steps); 1 without a step (validation) or
    with ``anneal_steps`` 0."""
    if step is None or anneal_steps <= 0:
        return 1.0
    return min(1.0, step / anneal_steps)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) of diagonal Gaussians, summed over the last dim: [B]."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0).sum(-1)


def row_noise(index: torch.Tensor, dim: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """[B, dim] standard normal noise, row i drawn from a generator seeded by (seed, index[i]):
    the same numbers for a test row whatever batch it is decoded in."""
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
            for i in index.tolist()]
    return torch.stack(rows).to(device) if rows else torch.zeros(0, dim, device=device)


def gaussian_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 2Z] -> (μ, log σ²), log σ² clamped to [-10, 10] (no overflow in exp)."""
    mu, logvar = x.float().chunk(2, -1)
    return mu, logvar.clamp(-10.0, 10.0)


class LatentSeq2Seq(Seq2Seq):
    """Seq2Seq whose decoder is conditioned on a latent code z [B, Z] (CVAE, DialogWAE).

    Subclasses implement ``latent(batch, c, posterior) -> (z, terms)``: z from the
    posterior (training and validation: the response is known) or from the prior
    (decoding); ``terms`` holds what their loss needs."""

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__(params, ctx)
        h, z = self.params["hidden"], self.params["latent"]
        self.init_state = nn.Linear(h + z, h)

    def extra_context_sizes(self) -> list[int]:
        return [self.params["latent"]]

    def extra_contexts(self, state: State, query: torch.Tensor) -> list[torch.Tensor]:
        return [state["z"]]

    def response_vector(self, batch: Batch) -> torch.Tensor:
        """x = u(Y): the context encoder's top-layer final state over the response words."""
        words = batch.response_mask & (batch.response != self.eos)
        _, h = self.encoder(self.embeddings(batch.response), words)
        return h[-1].float()

    def latent(self, batch: Batch, c: torch.Tensor, posterior: bool) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def prior_noise(self, batch: Batch, dim: int, device) -> torch.Tensor:
        """ε for a prior sample: random in training, per-row seeded otherwise (decoding)."""
        if self.training:
            return torch.randn(batch.size, dim, device=device)
        return row_noise(batch.index, dim, int(self.params["decode_seed"]), device)

    def encode_latent(self, batch: Batch, posterior: bool) -> tuple[State, dict]:
        out, s0 = self.encode_context(batch.query, batch.query_mask)
        c = s0[:, -1].float()
        z, terms = self.latent(batch, c, posterior)
        s = self.init_state(torch.cat([c, z], -1).to(out.dtype)).float()
        hidden = s.unsqueeze(1).expand(-1, s0.shape[1], -1).contiguous()
        return {"hidden": hidden, "context": out, "context_mask": batch.query_mask, "z": z}, {"c": c, **terms}

    def encode(self, batch: Batch) -> State:
        """Decoding: z from the prior."""
        return self.encode_latent(batch, posterior=False)[0]


@register("cvae")
class CVAE(LatentSeq2Seq):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        h, z = self.params["hidden"], self.params["latent"]
        self.annealed = False  # the KL weight has reached 1 (set by the training steps)
        self.recognition = nn.Linear(2 * h, 2 * z)
        self.prior = nn.Sequential(nn.Linear(h, max(h, 2 * z)), nn.Tanh(), nn.Linear(max(h, 2 * z), 2 * z))
        self.bow = Readout(h + z, self.embeddings, tie=self.params["bow_tied"], dropout=self.params["dropout"])

    @property
    def warmup_epochs(self) -> int:
        """Validation scores the negative ELBO at full KL weight. While the KL weight is
        still annealing, the posterior may spend nats the annealed loss barely charges, so
        that score rises as the model learns to use z: it must not decay the LR or stop
        training then (it did, after 3 epochs at a KL weight of 0.03, val PPL 345). The
        whole annealing is the loop's warm-up: every epoch until a training step has seen
        the weight reach 1."""
        return 0 if self.annealed else 1 << 30

    def latent(self, batch: Batch, c: torch.Tensor, posterior: bool) -> tuple[torch.Tensor, dict]:
        mu_p, logvar_p = gaussian_params(self.prior(c))
        if not posterior:
            eps = self.prior_noise(batch, mu_p.shape[-1], c.device)
            return mu_p + (0.5 * logvar_p).exp() * eps, {}
        mu_q, logvar_q = gaussian_params(self.recognition(torch.cat([self.response_vector(batch), c], -1)))
        z = mu_q + (0.5 * logvar_q).exp() * torch.randn_like(mu_q) if self.training else mu_q
        return z, {"kl": gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)}

    def bow_nll(self, batch: Batch, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """[B] −Σ_t log f_{y_t} over each response's words (``</s>`` and padding excluded)."""
        log_f = F.log_softmax(self.bow(torch.cat([z, c], -1)).float(), -1)
        words = batch.response_mask & (batch.response != self.eos)
        return -(log_f.gather(1, batch.response) * words).sum(1)

    def loss(self, batch: Batch, step: int | None = None, **ctx) -> dict[str, torch.Tensor]:
        state, terms = self.encode_latent(batch, posterior=True)
        nll = self.token_nll(batch, state).sum()
        kl = terms["kl"].sum()
        n_tokens = batch.response_mask.sum()
        denom = n_tokens.clamp(min=1)
        if not self.training:  # the negative ELBO at z = μ (an upper bound on −log p(y | c))
            nll_sum = (nll + kl).detach()
            return {"loss": nll_sum / denom, "nll_sum": nll_sum, "n_tokens": n_tokens, "kl": kl.detach() / batch.size}
        bow = self.bow_nll(batch, terms["c"], state["z"]).sum()
        w = kl_weight(step, int(self.params["kl_anneal_steps"]))
        self.annealed = w >= 1.0
        loss = (nll + w * kl + self.params["bow_weight"] * bow) / denom
        return {"loss": loss, "nll_sum": nll.detach(), "n_tokens": n_tokens, "kl": kl.detach() / batch.size,
                "bow": bow.detach() / denom, "kl_weight": torch.tensor(w)}
