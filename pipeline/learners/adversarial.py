"""Adversarial learning for response generation (Li et al. 2017, "Adversarial Learning for
Neural Dialogue Generation"; GCL Table 3's Adversarial row) as an objective for the one
training loop.

- Discriminator D(context, reply) -> P(human): two bidirectional GRU encoders (the
  backbone's :class:`~pipeline.models.layers.Encoder`), one over the multi-turn context and
  one over the reply, their final states joined and classified by an MLP. Li et al.'s is
  hierarchical (an utterance encoder, then a sentence-level encoder over the dialogue);
  this "simple encoder" reading takes the ``<eot>``-joined context as one sequence.
  Its embeddings start as a copy of the generator's.
- Each training step (the paper's Algorithm 1, one D-step and one G-step per batch):
  1. sample a reply a ~ G(· | context) per example (pipeline/learners/rl.py's sampler, seeded by
     (``seed``, step));
  2. D-step: one Adam step of D (its own optimizer, ``d_lr``) on binary cross-entropy,
     gold replies = 1, sampled replies = 0;
  3. G-step: REINFORCE with reward r = D(context, a) from the updated D and the batch-mean
     baseline (Li et al. use a baseline to reduce variance; the per-token REGS variant is not
     implemented): −(r − b) log G(a | context);
  4. teacher forcing: + ``teacher_forcing`` · NLL(gold), the paper's step giving human
     replies reward 1.
- The first ``d_pretrain_steps`` calls train D only (the generator takes the teacher-forcing
  step alone meanwhile): Li et al. pre-train the discriminator before adversarial training.

The discriminator lives in the objective, not in the generator's checkpoint: a resumed
run starts a fresh D (and pre-trains it again). Under torchrun each process would train
its own D (not synchronised); the stage runs one process.

Selection: D's reward moves with D, so no validation number of it ranks checkpoints; the
run trains a fixed ``train.max_steps`` and the generations come from its last step
(``generate_last``), as the GCL run's last step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import Batch
from pipeline.learners.rl import reinforce, sample_replies, unwrap, with_replies
from pipeline.models import Generator
from pipeline.models.layers import Embeddings, Encoder, EncoderConfig
from pipeline.params_schema import config_from


@dataclass
class AdversarialConfig:
    hidden: int = 128  # discriminator encoders' width (even)
    d_lr: float = 1e-3
    d_pretrain_steps: int = 100
    teacher_forcing: float = 1.0
    max_len: int = 20
    temperature: float = 1.0
    seed: int = 1

    def __post_init__(self):
        if self.hidden < 2 or self.hidden % 2 or self.max_len < 1 or self.temperature <= 0 or self.d_lr <= 0:
            raise ValueError("adversarial: hidden even >= 2, max_len >= 1, temperature > 0, d_lr > 0")

    @classmethod
    def from_params(cls, params: dict) -> AdversarialConfig:
        return config_from(cls, "adversarial", params)


class Discriminator(nn.Module):
    """logit of P(human | context, reply) [B]."""

    def __init__(self, embeddings: torch.Tensor, hidden: int, pad: int):
        super().__init__()
        self.pad = pad
        self.embeddings = Embeddings(embeddings.shape[0], embeddings.shape[1], pad, embeddings.detach().cpu().numpy())
        self.context_encoder = Encoder(EncoderConfig(embeddings.shape[1], hidden))
        self.reply_encoder = Encoder(EncoderConfig(embeddings.shape[1], hidden))
        self.classifier = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, batch: Batch) -> torch.Tensor:
        _, hc = self.context_encoder(self.embeddings(batch.query), batch.query_mask)
        _, hr = self.reply_encoder(self.embeddings(batch.response), batch.response_mask)
        return self.classifier(torch.cat([hc[-1], hr[-1]], -1).float()).squeeze(-1).float()

    def bce(self, gold: Batch, fake: Batch) -> torch.Tensor:
        real, sampled = self(gold), self(fake)
        return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(sampled, torch.zeros_like(sampled)))


class Adversarial:
    """The objective: ``Adversarial(cfg, generator)(model, batch, step=...)``; ``generator``
    gives D its initial embeddings, vocabulary and device."""

    def __init__(self, cfg: AdversarialConfig, generator: Generator):
        self.cfg = cfg
        self.pad = generator.pad
        device = generator.embeddings.weight.device
        self.discriminator = Discriminator(generator.embeddings.weight, cfg.hidden, generator.pad).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr)
        self.calls = 0

    def d_step(self, gold: Batch, fake: Batch) -> torch.Tensor:
        self.discriminator.train()
        loss = self.discriminator.bce(gold, fake)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, model, batch: Batch, epoch: int = 0, step: int = 0, **ctx) -> dict:
        self.calls += 1
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        replies = sample_replies(unwrap(model), batch, self.cfg.max_len, self.cfg.temperature, g)
        fake = with_replies(batch, replies, self.pad)
        d_loss = self.d_step(batch, fake)
        mle = model(batch, method="loss", epoch=epoch, step=step)["loss"]
        out = {"d_loss": d_loss, "mle_loss": mle.detach()}
        if self.calls <= self.cfg.d_pretrain_steps:
            return {**out, "loss": self.cfg.teacher_forcing * mle}
        with torch.no_grad():
            self.discriminator.eval()
            reward = torch.sigmoid(self.discriminator(fake))
        log_pi = model(fake, method="sequence_log_prob").float()
        pg, _ = reinforce(log_pi, reward)
        return {**out, "pg_loss": pg.detach(), "reward": reward.mean(), "loss": pg + self.cfg.teacher_forcing * mle}
