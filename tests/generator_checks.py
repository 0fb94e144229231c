"""Checks every generator must pass (the Generator interface of pipeline/models), shared by
the model test files: each takes a built model and a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_forward_backward(model, batch, tied: bool) -> None:
    """A finite scalar loss over the batch's response tokens, finite gradients everywhere."""
    out = model(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["n_tokens"] == batch.response_mask.sum()
    out["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if tied:
        assert model.readout.embeddings.weight is model.embeddings.weight  # tied output layer


def check_sequence_log_prob(model, batch, bos: int) -> None:
    """sequence_log_prob (GCL's log p(r | c)) = −(the loss's summed NLL) = the sum of the
    teacher-forced token log-probs taken one decode_step at a time (what beam search and
    GCL rely on). token_nll, which reads out the real tokens only, equals the cross-entropy
    of the full [B, T, V] logits (0 at padding). Call in eval mode."""
    n = batch.size
    with torch.no_grad():
        slp = model.sequence_log_prob(batch)
        torch.testing.assert_close(slp.sum(), -model.loss(batch)["nll_sum"])
        full = F.cross_entropy(model.teacher_forced_logits(batch).transpose(1, 2), batch.response, reduction="none")
        assert (~batch.response_mask).any()  # the batch has padding to skip
        torch.testing.assert_close(model.token_nll(batch), full * batch.response_mask)
        state, prev = model.encode(batch), torch.full((n,), bos)
        total = torch.zeros(n)
        for t in range(batch.response.shape[1]):
            lp, state = model.decode_step(state, prev)
            y = batch.response[:, t]
            total += lp.gather(1, y[:, None]).squeeze(1) * batch.response_mask[:, t]
            prev = y
    torch.testing.assert_close(slp, total, rtol=1e-4, atol=1e-4)


def check_overfits(model, batch, steps: int = 60, lr: float = 0.01) -> None:
    """Adam on one batch brings the loss below a quarter of where it started."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss = model(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first
