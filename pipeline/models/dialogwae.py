"""DialogWAE: a conditional Wasserstein auto-encoder with a GAN in the latent space, on the
Seq2Seq backbone (Gu et al. 2019, "DialogWAE: Multimodal Response Generation with
Conditional Wasserstein Auto-Encoder"; GCL Table 3's DialogWAE row).

c = u(X) (the Seq2Seq encoder over the multi-turn history), x = u(Y) (the same encoder
over the response). Both latent distributions are implicit: Gaussian noise through a
generator network,

- posterior: ε ~ N(μ_q, σ_q²I), [μ_q; log σ_q²] = MLP_q([x; c]); z = G_q(ε);
- prior:     ε ~ N(μ_p, σ_p²I), [μ_p; log σ_p²] = MLP_p(c);       z̃ = G_p(ε);
- decoder conditioned on z as CVAE's (:class:`~pipeline.models.cvae.LatentSeq2Seq`:
  s_0 = W [c; z] + b, z at every step);
- critic D([z; c]) -> R, an MLP: the Wasserstein distance W = E D(z, c) − E D(z̃, c)
  between posterior and prior codes, WGAN-GP's gradient penalty λ E(‖∇D(ẑ)‖ − 1)² on
  interpolates ẑ (λ = ``gp_weight``, 10 as Gu et al.).

Gu et al. train three phases per batch with separate optimizers: the auto-encoder
(reconstruction), the critic (maximise W − GP, ``n_critic`` times) and the generators
(minimise W). The project has one training loop with one optimizer and one backward per
step, so :meth:`DialogWAE.loss` adds the three terms, each reaching only its own
parameters:

    loss = NLL(y | z)/tokens  +  gan_weight · [ W_{D frozen}(G_q, G_p)  +  (−W + λ GP)_{codes detached} ]

The generator term runs the critic with detached weights (``torch.func.functional_call``),
the critic term sees detached codes, and, as in the authors' code, the context and
response encodings enter the GAN terms detached (the encoder learns from reconstruction).
This is simultaneous gradient descent-ascent with one critic update per generator update
(the paper: 5). The prior networks and the critic learn ``gan_lr_scale`` times slower than
the auto-encoder (:class:`ScaledLinear`; Gu et al.'s code gives the GAN its own optimizers
at rates 10^4-10^5 below the auto-encoder's): at the auto-encoder's rate the critic's
gradient penalty ran away (training loss 10 -> 450 within 420 steps, validation PPL
370 -> 1444). The posterior side is the auto-encoder's, as in the authors' code, at full
rate, and ``posterior_gan_scale`` scales the generator term's gradient into it (1: the
paper's objective; below 1 the posterior learns mostly from reconstruction, as it does in
the authors' code, where its GAN steps run at RMSprop 5e-5 against the auto-encoder's SGD
1.0; 0: only the prior side moves to match the posterior). The single-Gaussian prior
(DialogWAE, not the Gaussian-mixture DialogWAE-GMP).

Validation (eval mode): z = G_q(μ_q), the loop's ``nll`` is the reconstruction NLL (there
is no likelihood bound for an implicit prior). Decoding: z̃ = G_p(μ_p + σ_p ε) with ε per
test row seeded by (``decode_seed``, row position), as CVAE.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.dataset import Batch
from pipeline.models import ModelContext, register
from pipeline.models.cvae import LatentSeq2Seq, gaussian_params

DEFAULTS = {"latent": 64, "noise": 64, "gan_weight": 1.0, "gp_weight": 10.0, "critic_hidden": 128,
            "gan_lr_scale": 0.1, "posterior_gan_scale": 1.0, "decode_seed": 1}


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; its gradient times ``scale`` in the backward pass."""
    return x if scale == 1.0 else scale * x + (1.0 - scale) * x.detach()


class ScaledLinear(nn.Linear):
    """A linear layer whose weights are ``scale`` · θ, θ the stored parameters (initialised to
    the usual weights / ``scale``): Adam's steps on θ are about lr whatever the gradient's
    size, so the layer itself moves ``scale`` times slower. Gu et al. give the GAN networks
    their own, far smaller learning rates than the auto-encoder (RMSprop 5e-5 / 1e-5 against
    SGD 1.0); the project's one loop has one optimizer, and this is its per-network rate."""

    def __init__(self, n_in: int, n_out: int, scale: float = 1.0):
        super().__init__(n_in, n_out)
        self.scale = float(scale)
        with torch.no_grad():
            self.weight.div_(self.scale)
            self.bias.div_(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.scale, self.bias * self.scale)


def mlp(n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.Tanh, scale: float = 1.0) -> nn.Sequential:
    return nn.Sequential(ScaledLinear(n_in, hidden, scale), act(), ScaledLinear(hidden, n_out, scale))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E(‖∇_ẑ D(ẑ)‖₂ − 1)² at ẑ = α real + (1 − α) fake, α ~ U(0, 1) per row.
    ``real`` and ``fake`` are detached [B, D] inputs of the critic."""
    alpha = torch.rand(real.shape[0], 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with torch.autocast(mixed.device.type, enabled=False):  # second-order gradients in float32
        out = critic(mixed.float())
        (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=-1) - 1.0) ** 2).mean()


@register("dialogwae")
class DialogWAE(LatentSeq2Seq):
    inputs = frozenset()

    def __init__(self, params: dict, ctx: ModelContext):
        super().__init__({**DEFAULTS, **params}, ctx)
        p = self.params
        h, z, e, ch = p["hidden"], p["latent"], p["noise"], p["critic_hidden"]
        k = p["gan_lr_scale"]  # the prior side and the critic learn only from the GAN terms
        self.posterior_net = mlp(2 * h, h, 2 * e)
        self.prior_net = mlp(h, h, 2 * e, scale=k)
        self.posterior_generator = mlp(e, h, z, nn.ReLU)
        self.prior_generator = mlp(e, h, z, nn.ReLU, scale=k)
        self.critic = nn.Sequential(ScaledLinear(z + h, ch, k), nn.LeakyReLU(0.2), ScaledLinear(ch, ch, k),
                                    nn.LeakyReLU(0.2), ScaledLinear(ch, 1, k))

    def posterior_code(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mu, logvar = gaussian_params(self.posterior_net(torch.cat([x, c], -1)))
        eps = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu
        return self.posterior_generator(eps).float()

    def prior_code(self, batch: Batch, c: torch.Tensor) -> torch.Tensor:
        mu, logvar = gaussian_params(self.prior_net(c))
        eps = mu + (0.5 * logvar).exp() * self.prior_noise(batch, mu.shape[-1], c.device)
        return self.prior_generator(eps).float()

    def latent(self, batch: Batch, c: torch.Tensor, posterior: bool) -> tuple[torch.Tensor, dict]:
        if not posterior:
            return self.prior_code(batch, c), {}
        x = self.response_vector(batch)
        return self.posterior_code(x, c), {"x": x}

    def critic_frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        """D with detached weights: the generators' term does not train the critic."""
        weights = {name: p.detach() for name, p in self.critic.named_parameters()}
        return torch.func.functional_call(self.critic, weights, (inputs,)).float()

    def gan_terms(self, batch: Batch, c: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generators' W (critic frozen) and the critic's −W + λ GP (codes detached),
        on fresh posterior and prior codes from the detached encodings."""
        c, x = c.detach(), x.detach()
        z_post = torch.cat([scale_grad(self.posterior_code(x, c), self.params["posterior_gan_scale"]), c], -1)
        z_prior = torch.cat([self.prior_code(batch, c), c], -1)
        w_gen = self.critic_frozen(z_post).mean() - self.critic_frozen(z_prior).mean()
        real, fake = z_post.detach(), z_prior.detach()
        w_critic = self.critic(real).float().mean() - self.critic(fake).float().mean()
        gp = gradient_penalty(self.critic, real, fake)
        return {"generator": w_gen, "critic": -w_critic + self.params["gp_weight"] * gp, "wasserstein": w_critic.detach()}

    def loss(self, batch: Batch, **ctx) -> dict[str, torch.Tensor]:
        state, terms = self.encode_latent(batch, posterior=True)
        out = self.nll_terms(batch, state)
        if not self.training:
            return out
        gan = self.gan_terms(batch, terms["c"], terms["x"])
        loss = out["loss"] + self.params["gan_weight"] * (gan["generator"] + gan["critic"])
        return {**out, "loss": loss, "wasserstein": gan["wasserstein"]}
