"""DeepRL (Li et al. 2016b, "Deep Reinforcement Learning for Dialogue Generation"; GCL
Table 3's DeepRL row) as an objective for the one training loop, and the sampling and
REINFORCE pieces the adversarial objective (pipeline/learners/adversarial.py) shares.

Each training step samples one reply a ~ π(· | context) per example from the policy (the
model being trained, initialised from the MLE Seq2Seq), scores it with the paper's three
rewards, and takes a policy-gradient step:

- ease of answering  r1 = −(1/N_S) Σ_{s ∈ S} (1/N_s) log p_seq2seq(s | a): how likely the
  frozen MLE model answers a with a dull reply s of the list S (``dull_responses``; the
  paper's list, normalised as the corpus is);
- information flow   r2 = −log cos(h_{p_i}, h_{p_{i+1}}): the frozen MLE encoder's final
  states of the agent's previous turn (the context's second-to-last utterance) and of a;
  cos is clamped to [``cos_floor``, 1] (the log of a non-positive cosine is undefined), and
  r2 = 0 where the agent has no previous turn;
- semantic coherence r3 = (1/N_a) log p_seq2seq(a | context) + (1/N_q) log p_backward(q | a),
  q the partner's last utterance, p_backward the backward Seq2Seq
  (pipeline/models/seq2seq_backward.py, ``source: last_turn``); ``coherence_forward`` weighs
  the first half (1: the paper; 0: the backward half alone). Why a knob: the forward half is
  mode-seeking, its optimum the likeliest and most generic reply for every context, and it is
  what ranks a constant question above the gold replies in the reward control;
- r = λ1 r1 + λ2 r2 + λ3 r3 with (0.25, 0.25, 0.5), the paper's weights;
- L = −(1/B) Σ (r − b) log π(a_{>L} | context, a_{≤L}) + ``mle_weight`` · NLL(gold), b the
  batch's mean reward (the paper: "the average reward"); with ``samples`` K > 1, K replies
  per context and b the mean of that context's K (the paper samples 5 candidates per turn):
  the advantage then compares replies to the same context, not contexts with easy or hard
  partners;
- the paper's curriculum: the first L tokens of a are the gold reply's (MLE trains them,
  through the NLL term) and only the rest is sampled and reinforced; L falls linearly from
  ``curriculum_tokens`` at step 0 to 0 at step ``curriculum_steps`` ("gradually anneal the
  value of L to zero"; the paper gives no numbers). ``curriculum_tokens: 0`` turns it off:
  without it the policy collapsed onto one reply the rewards like for every context
  ("what do you do for a living ?" for 3,889 of 3,894 test turns after 400 steps).

Choices: one turn, not the paper's two-agent simulation of several turns (the rewards are
those of one simulated turn); samples drawn with dropout off from a generator seeded by
(``seed``, step), at most ``max_len`` tokens, at ``temperature``; the frozen scorers are the
MLE model the policy starts from (eval mode) and the backward model.

Selection: the objective's ``validate`` hook fills the loop's objective slot ``cl`` with
the negative mean reward of greedy replies on the first ``valid_examples`` valid examples,
so ``train.criterion: cl_nll`` selects on −reward + 0.5 NLL (the loop has no other slot for
an objective's own validation number).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.dataset import Batch, DialogueDataset, Vocab
from pipeline.models import Generator
from pipeline.models.seq2seq_backward import context_turns, pad_rows
from pipeline.params_schema import config_from
from pipeline.preprocessing.text import normalize

# Li et al. 2016b's list of dull responses (from OpenSubtitles), written as the corpus is
# normalised (pipeline.preprocessing.text.normalize expands contractions).
DULL_RESPONSES = ("i do not know what you are talking about .", "i do not know .", "you do not know .",
                  "you know what i mean .", "i know what you mean .", "you know what i am saying .",
                  "you do not know anything .")
REWARD_WEIGHTS = (0.25, 0.25, 0.5)


# -- sampling and REINFORCE (shared with the adversarial objective) ------------------------
def unwrap(model) -> Generator:
    return getattr(model, "module", model)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] one draw per row of ``probs`` [B, V] by inverting its CDF: about 15x faster than
    ``torch.multinomial`` on CPU at 6,400 x 7,384 (which took 60% of MMI's sampled N-best).
    A token of probability 0 is never drawn (the first index whose cumulative mass exceeds u)."""
    cdf = probs.float().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:] * (1 - 1e-6)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


@torch.no_grad()
def sample_replies(model: Generator, batch: Batch, max_len: int, temperature: float = 1.0,
                   generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
                   top_k: int = 0, repeat: int = 1, log_probs: bool = False):
    """[B·repeat, T] replies sampled token by token from the model (dropout off), ``</s>``-ended
    where the model ended them within ``max_len``, ``<pad>`` after; never ``<pad>``/``<s>``.
    ``top_k`` > 0 samples among each step's k likeliest tokens only.
    ``repeat``: that many samples of each context, adjacent; the contexts are encoded once
    (MMI's N-best of 50 per context spent 80% of its time re-encoding copies).
    ``log_probs``: also return each reply's summed log p(T | S) under the model itself
    (before temperature and ``top_k``), what a teacher-forced pass would score.
    ``prefix`` [B·repeat, L]: the first L tokens are forced (the gold reply's, DeepRL's
    curriculum); a row whose prefix ends (``</s>``) is done."""
    was = model.training
    model.eval()
    try:
        state = model.encode(batch)
        b, device = batch.size, batch.query.device
        if repeat > 1:
            state = model.reorder_state(state, torch.arange(b, device=device).repeat_interleave(repeat))
            b *= repeat
        prev = torch.full((b,), model.bos, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        total = torch.zeros(b, device=device)
        out = []
        for _ in range(max_len):
            log_p, state = model.decode_step(state, prev)
            raw = log_p.float()
            log_p = raw / temperature
            log_p[:, [model.pad, model.bos]] = -torch.inf
            if top_k:
                log_p = log_p.masked_fill(log_p < log_p.topk(top_k, -1).values[:, -1:], -torch.inf)
            tok = sample_categorical(torch.softmax(log_p, -1).cpu(), generator).to(device)
            if prefix is not None and len(out) < prefix.shape[1]:
                forced = prefix[:, len(out)]
                tok = torch.where(forced != model.pad, forced, tok)
            tok = tok.masked_fill(done, model.pad)
            if log_probs:
                total += raw.gather(1, tok.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
            out.append(tok)
            done |= tok == model.eos
            prev = tok
            if bool(done.all()):
                break
        replies = torch.stack(out, 1)
        return (replies, total) if log_probs else replies
    finally:
        model.train(was)


def with_replies(batch: Batch, replies: torch.Tensor, pad: int) -> Batch:
    """``batch`` (contexts and all) with ``replies`` [B, T] as the responses."""
    return dataclasses.replace(batch, response=replies, response_mask=replies != pad)


def reinforce(log_probs: torch.Tensor, rewards: torch.Tensor, samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE: (−mean((r − b) log π(a)), the advantages). b is the batch's mean reward, or
    with ``samples`` K > 1 (rows = contexts × K, each context's samples adjacent) the mean of
    the same context's K samples, so the gradient ranks replies within a context."""
    if samples > 1:
        baseline = rewards.view(-1, samples).mean(1).repeat_interleave(samples)
    else:
        baseline = rewards.mean()
    advantage = (rewards - baseline).detach()
    return -(advantage * log_probs).mean(), advantage


# -- the rewards -----------------------------------------------------------------------------
def token_counts(batch: Batch) -> torch.Tensor:
    return batch.response_mask.sum(1).clamp(min=1).float()


@torch.no_grad()
def ease_of_answering(scorer: Generator, replies: torch.Tensor, dull: list[torch.Tensor], pad: int) -> torch.Tensor:
    """[B] r1 = −mean_s (1/N_s) log p(s | a): the reply a as the context of every dull s."""
    b, device = replies.shape[0], replies.device
    words = [r[(r != pad) & (r != scorer.eos)] for r in replies]
    query, query_mask = pad_rows([w for w in words for _ in dull], pad, device)
    response, response_mask = pad_rows([s.to(device) for _ in words for s in dull], pad, device)
    pairs = Batch(torch.arange(b * len(dull), device=device), query, query_mask, response, response_mask)
    per_token = scorer.sequence_log_prob(pairs).float() / token_counts(pairs)
    return -per_token.view(b, len(dull)).mean(1)


@torch.no_grad()
def information_flow(scorer, batch: Batch, replies: torch.Tensor, pad: int, cos_floor: float) -> torch.Tensor:
    """[B] r2 = −log cos(h(previous own turn), h(a)); 0 without a previous own turn."""
    device = replies.device
    turns = context_turns(batch.query, batch.query_mask)
    previous = [t[-2] if len(t) >= 2 else torch.zeros(0, dtype=torch.long, device=device) for t in turns]
    ids, mask = pad_rows(previous, pad, device)
    _, h_prev = scorer.encode_context(ids, mask)
    words = replies.masked_fill(replies == scorer.eos, pad)
    _, h_a = scorer.encode_context(words, words != pad)
    cos = F.cosine_similarity(h_prev[:, -1].float(), h_a[:, -1].float(), dim=-1)
    r2 = -torch.log(cos.clamp(min=cos_floor, max=1.0))
    return torch.where(mask.any(1), r2, torch.zeros_like(r2))


@torch.no_grad()
def coherence_terms(scorer: Generator, backward, sampled: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """r3's two halves, [B] each: (1/N_a) log p(a | context) and (1/N_q) log p_backward(q | a).
    Apart in the reward control: the forward half alone favours the likeliest, most generic reply."""
    forward = scorer.sequence_log_prob(sampled).float() / token_counts(sampled)
    back = backward.sequence_log_prob(sampled).float() / backward.source_tokens(sampled).clamp(min=1).float()
    return forward, back


def semantic_coherence(scorer: Generator, backward, sampled: Batch) -> torch.Tensor:
    """[B] r3 = (1/N_a) log p(a | context) + (1/N_q) log p_backward(q | a)."""
    forward, back = coherence_terms(scorer, backward, sampled)
    return forward + back


@dataclass
class DeepRLConfig:
    ease_weight: float = REWARD_WEIGHTS[0]
    flow_weight: float = REWARD_WEIGHTS[1]
    coherence_weight: float = REWARD_WEIGHTS[2]
    coherence_forward: float = 1.0  # weight of r3's forward half (1: the paper's r3; 0: log p_backward(q | a) alone)
    mle_weight: float = 1.0  # teacher-forced NLL on the gold reply beside the policy gradient
    max_len: int = 20  # sampled reply length cap (tokens)
    temperature: float = 1.0
    cos_floor: float = 0.01
    dull_responses: list[str] = field(default_factory=lambda: list(DULL_RESPONSES))
    valid_examples: int = 256  # validation reward on the first N valid examples (greedy replies)
    samples: int = 1  # replies sampled per context; > 1: each context's mean reward is its baseline
    curriculum_tokens: int = 0  # L at step 0: gold tokens forced before sampling (0: no curriculum)
    curriculum_steps: int = 400  # L reaches 0 at this optimizer step
    seed: int = 1

    def __post_init__(self):
        if self.coherence_forward < 0 or self.samples < 1:
            raise ValueError("deeprl: coherence_forward >= 0, samples >= 1")
        if self.max_len < 1 or self.temperature <= 0 or not 0 < self.cos_floor <= 1 or not self.dull_responses:
            raise ValueError("deeprl: max_len >= 1, temperature > 0, cos_floor in (0, 1], dull_responses non-empty")
        if self.curriculum_tokens < 0 or self.curriculum_steps < 1:
            raise ValueError("deeprl: curriculum_tokens >= 0, curriculum_steps >= 1")

    def curriculum(self, step: int) -> int:
        """L at ``step``: the gold tokens forced before the sampled, reinforced part."""
        return math.ceil(self.curriculum_tokens * max(0.0, 1.0 - step / self.curriculum_steps))

    @classmethod
    def from_params(cls, params: dict, section: str = "deeprl") -> DeepRLConfig:
        return config_from(cls, section, params)


class DeepRL:
    """The objective: ``DeepRL(cfg, scorer, backward, vocab)(model, batch, step=...)``.

    ``scorer``: the frozen MLE Seq2Seq (log p(s | a), log p(a | context), the encoder of r2);
    ``backward``: the frozen backward Seq2Seq. Both are put in eval mode without gradients."""

    def __init__(self, cfg: DeepRLConfig, scorer: Generator, backward: Generator, vocab: Vocab,
                 valid: DialogueDataset | None = None):
        self.cfg, self.vocab, self.valid = cfg, vocab, valid
        self.scorer, self.backward = scorer.eval().requires_grad_(False), backward.eval().requires_grad_(False)
        self.dull = [torch.as_tensor(vocab.encode(normalize(s), eos=True), dtype=torch.long)
                     for s in cfg.dull_responses]

    def rewards(self, batch: Batch, replies: torch.Tensor) -> dict[str, torch.Tensor]:
        pad = self.vocab.pad
        sampled = with_replies(batch, replies, pad)
        r1 = ease_of_answering(self.scorer, replies, self.dull, pad)
        r2 = information_flow(self.scorer, batch, replies, pad, self.cfg.cos_floor)
        r3_forward, r3_backward = coherence_terms(self.scorer, self.backward, sampled)
        r3 = self.cfg.coherence_forward * r3_forward + r3_backward
        total = self.cfg.ease_weight * r1 + self.cfg.flow_weight * r2 + self.cfg.coherence_weight * r3
        return {"ease": r1, "flow": r2, "coherence": r3, "coherence_forward": r3_forward,
                "coherence_backward": r3_backward, "reward": total}

    def __call__(self, model, batch: Batch, epoch: int = 0, step: int = 0, **ctx) -> dict:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        gold = batch
        if self.cfg.samples > 1:  # each context K times, its samples adjacent
            batch = batch.select(torch.arange(batch.size).repeat_interleave(self.cfg.samples))
        forced = self.cfg.curriculum(step)
        prefix = batch.response[:, :forced] if forced else None
        replies = sample_replies(unwrap(model), batch, self.cfg.max_len, self.cfg.temperature, g, prefix)
        r = self.rewards(batch, replies)
        token_nll = model(with_replies(batch, replies, self.vocab.pad), method="token_nll").float()
        log_pi = -token_nll[:, forced:].sum(1)  # only the sampled tokens are the policy's actions
        pg, _ = reinforce(log_pi, r["reward"], self.cfg.samples)
        out = {"pg_loss": pg.detach(), "curriculum_tokens": torch.tensor(float(forced)),
               **{k: v.mean() for k, v in r.items()}}
        loss = pg
        if self.cfg.mle_weight:
            mle = model(gold, method="loss", epoch=epoch, step=step)["loss"]
            out["mle_loss"] = mle.detach()
            loss = loss + self.cfg.mle_weight * mle
        return {**out, "loss": loss}

    @torch.no_grad()
    def validate(self, model, device, precision: str = "auto") -> dict[str, float]:
        """{"cl": −mean reward of greedy replies on the first ``valid_examples`` valid rows}."""
        if self.valid is None:
            return {}
        from pipeline.decode import greedy
        from pipeline.train import autocast  # the loop's module

        was = model.training
        model.eval()
        total, n = 0.0, min(self.cfg.valid_examples, len(self.valid))
        try:
            for lo in range(0, n, 64):
                batch = self.valid.collate(list(range(lo, min(lo + 64, n)))).to(device)
                with autocast(torch.device(device), precision):
                    replies = greedy(model, batch, self.cfg.max_len).tokens
                    total += float(self.rewards(batch, replies)["reward"].sum())
        finally:
            model.train(was)
        return {"cl": -total / max(n, 1), "reward": total / max(n, 1)}
