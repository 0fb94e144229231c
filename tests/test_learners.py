"""GCL Table 3's other learning approaches on the Seq2Seq backbone: CVAE and DialogWAE
(pipeline/models/{cvae,dialogwae}.py), MMI (pipeline/learners/mmi.py with the backward model and the
response LM), DeepRL (pipeline/learners/rl.py) and Adversarial (pipeline/learners/adversarial.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.dataset import Batch, Vocab
from pipeline.decode import beam_search, generate_rows, greedy
from pipeline.learners.mmi import AntiLM, Bidi, MMIConfig, bidi_scores, nbest
from pipeline.models import model_params
from pipeline.models.cvae import gaussian_kl, kl_weight
from tests.model_inputs import build_tiny, tiny_params, write_model_inputs

torch.set_num_threads(1)
HISTORY = {"context": "history", "max_context_tokens": 60}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("learners"))


@pytest.fixture(scope="module")
def vocab(data_dir):
    return Vocab.load(data_dir / "prepared" / "vocab.parquet")


def make(name, data_dir, vocab, seed=0, **own):
    params = tiny_params(model=HISTORY, **{name: own})
    return build_tiny(name, model_params(params, name), data_dir, vocab, seed=seed)


def grads(model: nn.Module, prefix: str) -> float:
    return sum(float(p.grad.abs().sum()) for n, p in model.named_parameters()
               if n.startswith(prefix) and p.grad is not None)


# -- CVAE --------------------------------------------------------------------------------
def test_kl_annealing_schedule():
    assert [kl_weight(t, 100) for t in (0, 25, 50, 100, 1000)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_weight(None, 100) == 1.0 and kl_weight(7, 0) == 1.0


def test_gaussian_kl_by_hand():
    zero = torch.zeros(1, 2)
    assert gaussian_kl(zero, zero, zero, zero).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension; KL(N(0, e) || N(0, 1)) = (e − 1 − 1)/2
    assert gaussian_kl(torch.ones(1, 2), zero, zero, zero).item() == pytest.approx(1.0)
    assert gaussian_kl(zero[:, :1], torch.ones(1, 1), zero[:, :1], zero[:, :1]).item() == pytest.approx(
        (math.e - 2) / 2)


def test_cvae_annealing_is_the_loops_warm_up(data_dir, vocab):
    """While the KL weight is below 1, validations must not decay the LR or stop training."""
    model, ds = make("cvae", data_dir, vocab, latent=8, kl_anneal_steps=10)
    model.train()
    batch = ds.collate(list(range(4)))
    assert model.warmup_epochs > 10**6  # before any step
    model.loss(batch, step=9)
    assert model.warmup_epochs > 10**6
    model.loss(batch, step=10)
    assert model.warmup_epochs == 0
    model.eval()
    model.loss(batch)  # validation leaves the training state alone
    assert model.warmup_epochs == 0


def test_cvae_loss_terms_gradients_and_bow_value(data_dir, vocab):
    model, ds = make("cvae", data_dir, vocab, latent=8, kl_anneal_steps=10)
    model.train()
    batch = ds.collate(list(range(8)))
    torch.manual_seed(0)
    out = model.loss(batch, step=5)
    assert out["kl_weight"].item() == 0.5 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for part in ("recognition", "prior", "bow", "init_state", "decoder", "encoder"):
        assert grads(model, part) > 0, part
    # at step 0 the KL term is off; the loss is (NLL + BOW) / tokens, the reported parts add up
    model.zero_grad()
    torch.manual_seed(0)
    out0 = model.loss(batch, step=0)
    tokens = float(out0["n_tokens"])
    assert out0["loss"].item() == pytest.approx((float(out0["nll_sum"]) + float(out0["bow"]) * tokens) / tokens,
                                                rel=1e-5)


def test_cvae_bow_loss_hand_value(data_dir, vocab):
    model, ds = make("cvae", data_dir, vocab, latent=4)
    batch = ds.collate([0, 1])
    c, z = torch.zeros(2, 16), torch.zeros(2, 4)
    with torch.no_grad():  # a constant BOW distribution: every word costs log V
        for p in model.bow.parameters():
            p.zero_()
    words = (batch.response_mask & (batch.response != model.eos)).sum(1).float()
    assert model.bow_nll(batch, c, z).tolist() == pytest.approx((words * math.log(len(vocab))).tolist(), rel=1e-5)


def test_cvae_validation_is_the_negative_elbo_and_decoding_is_deterministic(data_dir, vocab):
    model, ds = make("cvae", data_dir, vocab, latent=8)
    model.eval()
    batch = ds.collate(list(range(6)))
    out = model.loss(batch)
    state, terms = model.encode_latent(batch, posterior=True)
    nll = float(model.token_nll(batch, state).sum().detach())
    assert float(out["nll_sum"]) == pytest.approx(nll + float(terms["kl"].sum().detach()), rel=1e-5)
    a = greedy(model, batch, 8).tokens
    assert torch.equal(greedy(model, batch, 8).tokens, a)
    b = greedy(model, ds.collate([3, 4, 5]), 8).tokens  # row noise depends on the row, not the batch
    w = min(a.shape[1], b.shape[1])
    assert torch.equal(a[3:, :w], b[:, :w])
    assert beam_search(model, batch, 3, 8).tokens.shape[0] == 6


def test_dialogwae_terms_reach_their_parameters(data_dir, vocab):
    model, ds = make("dialogwae", data_dir, vocab, latent=8, noise=8, critic_hidden=16)
    model.train()
    batch = ds.collate(list(range(8)))
    c = torch.randn(8, 16)
    x = torch.randn(8, 16)
    gan = model.gan_terms(batch, c, x)
    gan["generator"].backward(retain_graph=True)
    assert grads(model, "critic") == 0  # the generators' term never trains the critic
    assert grads(model, "posterior_generator") > 0 and grads(model, "prior_generator") > 0
    model.zero_grad()
    gan["critic"].backward()
    assert grads(model, "critic") > 0
    assert grads(model, "posterior_generator") == 0 and grads(model, "prior_net") == 0  # codes detached
    model.zero_grad()
    out = model.loss(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for part in ("encoder", "decoder", "posterior_net", "prior_net", "critic"):
        assert grads(model, part) > 0, part
    model.eval()
    assert greedy(model, batch, 6).tokens.shape[0] == 8


def test_dialogwae_posterior_gan_scale_scales_only_the_posterior_sides_gan_gradient(data_dir, vocab):
    c, x = torch.randn(8, 16), torch.randn(8, 16)
    got = {}
    for scale in (1.0, 0.25, 0.0):
        model, ds = make("dialogwae", data_dir, vocab, latent=8, noise=8, critic_hidden=16, posterior_gan_scale=scale)
        model.train()
        batch = ds.collate(list(range(8)))
        torch.manual_seed(3)  # the same posterior and prior noise for every scale
        model.gan_terms(batch, c, x)["generator"].backward()
        got[scale] = {part: grads(model, part) for part in ("posterior_generator", "prior_generator")}
    assert got[0.25]["posterior_generator"] == pytest.approx(0.25 * got[1.0]["posterior_generator"], rel=1e-4)
    assert got[0.0]["posterior_generator"] == 0 and got[0.0]["prior_generator"] > 0
    assert got[0.0]["prior_generator"] == pytest.approx(got[1.0]["prior_generator"], rel=1e-5)


def test_dialogwae_critic_learns_to_separate_shifted_codes(data_dir, vocab):
    from pipeline.models.dialogwae import gradient_penalty

    model, _ = make("dialogwae", data_dir, vocab, latent=4, critic_hidden=16)
    critic = model.critic
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        real = torch.randn(32, 4 + 16, generator=gen) + 1.0
        fake = torch.randn(32, 4 + 16, generator=gen) - 1.0
        loss = -(critic(real).mean() - critic(fake).mean()) + 10 * gradient_penalty(critic, real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real = torch.randn(256, 20, generator=gen) + 1.0
    fake = torch.randn(256, 20, generator=gen) - 1.0
    assert (critic(real).mean() - critic(fake).mean()).item() > 1.0


# -- MMI ---------------------------------------------------------------------------------
class TableModel(nn.Module):
    """A decoder whose next-token distribution depends only on the previous token:
    ``table[prev]`` (log-probs over a 7-token vocabulary: pad, unk, bos, eos, a, b, c)."""

    pad, unk, bos, eos = 0, 1, 2, 3
    vocab_size = 7

    def __init__(self, rows: dict[int, dict[int, float]]):
        super().__init__()
        table = torch.full((7, 7), 1e-6)
        for prev, nxt in rows.items():
            for tok, p in nxt.items():
                table[prev, tok] = p
        self.table = table.log()

    def encode(self, batch):
        return {"dummy": torch.zeros(batch.size, 1)}

    def reorder_state(self, state, index):
        return {k: v.index_select(0, index) for k, v in state.items()}

    def selected_persona(self, state):
        return None

    def decode_step(self, state, prev):
        return self.table[prev], state


A, B, C, EOS = 4, 5, 6, 3
FORWARD = {2: {A: 0.6, B: 0.3, C: 0.1}, A: {EOS: 0.9}, B: {EOS: 0.9}, C: {EOS: 0.9}}


def tiny_batch(n: int = 1) -> Batch:
    ids = torch.full((n, 2), 4)
    return Batch(torch.arange(n), ids, ids > 0, ids, ids > 0)


def test_nbest_lists_the_known_hypotheses_in_order():
    pools = nbest(TableModel(FORWARD), tiny_batch(2), n=3, max_len=4)
    for pool in pools:
        assert [h for h, _ in pool] == [[A, EOS], [B, EOS], [C, EOS]]
        assert [s for _, s in pool] == pytest.approx([math.log(0.54), math.log(0.27), math.log(0.09)], abs=1e-4)


def test_nbest_ranks_by_log_prob_per_token_and_keeps_replies_that_end_late():
    # "a </s>" ends first (log .3 over 3: -0.40); "b c </s>" (log .361 over 4: -0.25) and
    # "a c </s>" (log .285: -0.31) later but likelier a token: the first version stopped
    # once n replies had ended, with "a </s>" first
    table = TableModel({2: {A: 0.6, B: 0.4}, A: {EOS: 0.5, C: 0.5}, B: {C: 0.95}, C: {EOS: 0.95}})
    pools = nbest(table, tiny_batch(), n=3, max_len=6)
    assert [h for h, _ in pools[0]] == [[B, C, EOS], [A, C, EOS], [A, EOS]]
    assert pools[0][0][1] == pytest.approx(math.log(0.4 * 0.95 * 0.95), abs=1e-4)


class ScoredTable(TableModel):
    """TableModel with the teacher-forced log p(T | S) that sampled N-best lists need."""

    def sequence_log_prob(self, batch, **ctx):
        prev = torch.cat([torch.full_like(batch.response[:, :1], self.bos), batch.response[:, :-1]], 1)
        return (self.table[prev, batch.response] * batch.response_mask).sum(1)


def test_sampled_nbest_holds_distinct_samples_with_their_log_probs_and_is_seeded():
    from pipeline.learners.mmi import sampled_nbest

    model = ScoredTable(FORWARD)
    pools = sampled_nbest(model, tiny_batch(2), n=40, max_len=4, seed=3)
    want = {A: math.log(0.54), B: math.log(0.27), C: math.log(0.09)}
    for pool in pools:
        hyps = [tuple(h) for h, _ in pool]
        assert len(hyps) == len(set(hyps)) and {h[0] for h in hyps} == {A, B, C}  # 40 draws hold all three
        assert all(h[1:] == (EOS,) for h in hyps)
        assert [s for _, s in pool] == pytest.approx([want[h[0]] for h in hyps], abs=1e-3)
        assert [s for _, s in pool] == sorted((s for _, s in pool), reverse=True)  # best first
    assert sampled_nbest(model, tiny_batch(2), n=40, max_len=4, seed=3) == pools
    # top_k 1: only the likeliest token at every step, so one reply
    assert [[h for h, _ in pool] for pool in sampled_nbest(model, tiny_batch(2), n=10, max_len=4, top_k=1)] == [
        [[A, EOS]], [[A, EOS]]]
    with pytest.raises(ValueError, match="nbest"):
        MMIConfig(nbest="diverse")


def test_tune_picks_lambda_and_gamma_by_validation_bleu():
    from pipeline.learners.mmi import tune

    words = {A: "a", B: "b", C: "c", EOS: ""}
    bidi = Bidi(TableModel(FORWARD), FakeBackward(), MMIConfig(n_best=3, tune=True), max_len=4)
    lam, gamma, table = tune(bidi, [tiny_batch(2)], ["c", "c"], lambda ids: " ".join(words[t] for t in ids if t != EOS))
    # λ 0 and 0.1 keep "a" (BLEU 0); from 0.25 on "c" wins (log .09 > log .54 - 2.5): the smallest
    assert (lam, gamma) == (0.25, 0.0)
    assert len(table) == 25 and {r["lam"] for r in table} == {0.0, 0.1, 0.25, 0.5, 1.0}
    row = next(r for r in table if r["lam"] == 0.0 and r["length_weight"] == 0.0)
    assert row["bleu"] == 0.0 and row["top_reply_share"] == 1.0 and row["distinct_replies"] == 1


class FakeBackward(nn.Module):
    """log p(S | T): 0 when the reply contains ``c``, −10 otherwise."""

    def forward(self, batch, method="sequence_log_prob", **ctx):
        return torch.where((batch.response == C).any(1), 0.0, -10.0)


def test_bidi_reranking_picks_the_known_answer():
    assert bidi_scores(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([3.0]), 0.5, 0.1).item() == \
        pytest.approx(-1.0 - 1.0 + 0.3)
    forward = TableModel(FORWARD)
    # λ = 0: the forward model's best ("a"); λ = 0.5: log .09 + 0 > log .54 − 5, so "c"
    plain = Bidi(forward, FakeBackward(), MMIConfig(lam=0.0, length_weight=0.0, n_best=3), max_len=4)
    assert greedy(plain, tiny_batch(), 4).tokens[0].tolist() == [A, EOS]
    mmi = Bidi(forward, FakeBackward(), MMIConfig(lam=0.5, length_weight=0.0, n_best=3), max_len=4)
    assert mmi.choose(tiny_batch()) == [[C, EOS]]
    assert greedy(mmi, tiny_batch(2), 4).tokens.tolist() == [[C, EOS], [C, EOS]]


def test_antilm_penalises_only_the_first_tokens():
    forward = TableModel(FORWARD)
    lm = TableModel({2: {A: 0.9, B: 0.05, C: 0.05}, A: {EOS: 0.5}, B: {EOS: 0.5}, C: {EOS: 0.5}})
    # first token: log .6 − log .9 = −0.1 (a) vs log .3 − log .05 = 1.79 (b): anti-LM picks b
    assert greedy(AntiLM(forward, lm, 1.0, threshold=1), tiny_batch(), 4).tokens[0].tolist() == [B, EOS]
    assert greedy(AntiLM(forward, lm, 0.0, threshold=1), tiny_batch(), 4).tokens[0].tolist() == [A, EOS]
    assert greedy(AntiLM(forward, lm, 1.0, threshold=0), tiny_batch(), 4).tokens[0].tolist() == [A, EOS]
    out = greedy(AntiLM(forward, lm, 1.0, threshold=1, length_weight=0.25), tiny_batch(), 4)
    assert out.scores.item() == pytest.approx(math.log(0.3) - math.log(0.05) + math.log(0.9) + 0.5, abs=1e-4)


def test_backward_model_swaps_pairs_and_lm_ignores_the_context(data_dir, vocab):
    backward, ds = make("seq2seq_backward", data_dir, vocab)
    lm, _ = make("response_lm", data_dir, vocab)
    backward.eval()
    lm.eval()
    batch = ds.collate([2, 3, 4])
    swapped = backward.swap(batch)
    for i in range(3):
        words = vocab.decode(batch.response[i])
        assert vocab.decode(swapped.query[i]) == words
        last = vocab.decode(batch.query[i]).split(" <eot> ")[-1]
        assert vocab.decode(swapped.response[i]) == last
    assert backward.sequence_log_prob(batch).shape == (3,)
    other = ds.collate([5, 6, 7])
    mixed = Batch(batch.index, other.query, other.query_mask, batch.response, batch.response_mask)
    torch.testing.assert_close(lm.sequence_log_prob(batch), lm.sequence_log_prob(mixed))
    out = backward.loss(ds.collate(list(range(8))))
    assert torch.isfinite(out["loss"]) and int(out["n_tokens"]) == int(backward.source_tokens(
        ds.collate(list(range(8)))).sum())


def test_mmi_models_decode_through_generate_rows(data_dir, vocab):
    forward, ds = make("seq2seq", data_dir, vocab)
    backward, _ = make("seq2seq_backward", data_dir, vocab)
    lm, _ = make("response_lm", data_dir, vocab)
    for m in (forward, backward, lm):
        m.eval()
    bidi = Bidi(forward, backward, MMIConfig(n_best=3), max_len=6)
    rows = generate_rows(bidi, ds, max_len=6, batch_size=64)
    assert len(rows) == len(ds) and all(isinstance(r["hypothesis"], str) for r in rows)
    assert generate_rows(AntiLM(forward, lm, 0.5, 3), ds, max_len=6)[0]["example_id"] == rows[0]["example_id"]
    with pytest.raises(ValueError, match="mode"):
        MMIConfig(mode="both")


# -- DeepRL ------------------------------------------------------------------------------
def rl_setup(data_dir, vocab, **cfg):
    from pipeline.learners.rl import DeepRL, DeepRLConfig

    scorer, ds = make("seq2seq", data_dir, vocab, seed=1)
    backward, _ = make("seq2seq_backward", data_dir, vocab, seed=2)
    return DeepRL(DeepRLConfig(max_len=6, **cfg), scorer, backward, vocab), ds


def replies_of(vocab, texts: list[str]) -> torch.Tensor:
    from pipeline.models.seq2seq_backward import pad_rows

    return pad_rows([torch.tensor(vocab.encode(t, eos=True)) for t in texts], vocab.pad, "cpu")[0]


def test_ease_of_answering_is_lower_for_a_dull_reply(data_dir, vocab):
    from pipeline.learners.rl import DULL_RESPONSES, ease_of_answering

    scorer, ds = make("seq2seq", data_dir, vocab, seed=1)
    dull_text = "i do not know ."
    informative = "my dog likes to swim in the lake ."
    # Teach the scorer that dull replies answer a dull message, and not an informative one
    opt = torch.optim.Adam(scorer.parameters(), lr=0.01)
    contexts = replies_of(vocab, [dull_text] * len(DULL_RESPONSES) + [informative] * 2)
    responses = replies_of(vocab, [*DULL_RESPONSES, "my cat is orange .", "i swim too ."])
    n = contexts.shape[0]
    batch = Batch(torch.arange(n), contexts.masked_fill(contexts == vocab.eos, vocab.pad),
                  (contexts != vocab.pad) & (contexts != vocab.eos), responses, responses != vocab.pad)
    scorer.train()
    for _ in range(40):
        opt.zero_grad()
        scorer.loss(batch)["loss"].backward()
        opt.step()
    scorer.eval()
    replies = replies_of(vocab, [dull_text, informative])
    dull = [torch.tensor(vocab.encode(s, eos=True)) for s in DULL_RESPONSES]
    r1 = ease_of_answering(scorer, replies, dull, vocab.pad)
    assert r1[0] < r1[1]  # the dull reply invites a dull answer: lower reward


def test_information_flow_penalises_repeating_the_previous_turn(data_dir, vocab):
    from pipeline.learners.rl import information_flow
    from pipeline.models.seq2seq_backward import context_turns

    rl, ds = rl_setup(data_dir, vocab)
    full = ds.collate(list(range(len(ds))))
    rows = [i for i, t in enumerate(context_turns(full.query, full.query_mask)) if len(t) >= 2][:2]
    batch = ds.collate(rows)
    previous = [t[-2] for t in context_turns(batch.query, batch.query_mask)]
    same = torch.stack([torch.cat([p, torch.tensor([vocab.eos])]) for p in previous[:1]])
    r_same = information_flow(rl.scorer, batch.select(torch.tensor([0])), same, vocab.pad, 0.01)
    assert r_same.item() == pytest.approx(0.0, abs=1e-4)  # cos = 1: −log 1 = 0
    other = replies_of(vocab, ["zzz"])  # an <unk> reply: a different direction
    assert information_flow(rl.scorer, batch.select(torch.tensor([0])), other, vocab.pad, 0.01).item() > 0
    import dataclasses

    one = batch.select(torch.tensor([0]))
    first = dataclasses.replace(one, query=torch.zeros_like(one.query), query_mask=torch.zeros_like(one.query_mask))
    assert information_flow(rl.scorer, first, other, vocab.pad, 0.01).item() == 0.0  # no previous own turn


def test_deeprl_objective_gradients_and_coherence(data_dir, vocab):
    from pipeline.learners.rl import semantic_coherence, with_replies

    rl, ds = rl_setup(data_dir, vocab)
    policy, _ = make("seq2seq", data_dir, vocab, seed=1)  # starts as the scorer
    policy.train()
    batch = ds.collate(list(range(8)))
    out = rl(policy, batch, step=3)
    assert torch.isfinite(out["loss"]) and {"ease", "flow", "coherence", "reward", "pg_loss"} <= set(out)
    out["loss"].backward()
    assert grads(policy, "decoder") > 0 and grads(policy, "encoder") > 0
    assert all(p.grad is None for p in rl.scorer.parameters()) and all(p.grad is None for p in rl.backward.parameters())
    # coherence = per-token forward log-prob + per-token backward log-prob, by hand
    replies = replies_of(vocab, ["i like dogs ."] * 2)
    sampled = with_replies(batch.select(torch.tensor([0, 1])), replies, vocab.pad)
    want = (rl.scorer.sequence_log_prob(sampled) / sampled.response_mask.sum(1)
            + rl.backward.sequence_log_prob(sampled) / rl.backward.source_tokens(sampled))
    torch.testing.assert_close(semantic_coherence(rl.scorer, rl.backward, sampled), want.detach())
    # seeded sampling: the same step draws the same replies
    from pipeline.learners.rl import sample_replies

    a = sample_replies(policy, batch, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_replies(policy, batch, 6, generator=torch.Generator().manual_seed(5)))
    assert not ((a == vocab.pad) & torch.cat([torch.zeros(8, 1, dtype=torch.bool),
                                               (a == vocab.eos).cumsum(1)[:, :-1] == 0], 1)).any()
    # repeat: each context encoded once, sampled 3 times -- the same draws as a repeated batch;
    # log_probs: the summed log p(T | S) a teacher-forced pass gives the same replies
    rows = torch.arange(8).repeat_interleave(3)
    r, lp = sample_replies(policy, batch, 6, generator=torch.Generator().manual_seed(5), repeat=3, log_probs=True)
    assert not lp.requires_grad  # sampling builds no graph (REINFORCE rescores the replies with grad)
    assert torch.equal(r, sample_replies(policy, batch.select(rows), 6, generator=torch.Generator().manual_seed(5)))
    policy.eval()
    with torch.no_grad():
        want = policy.sequence_log_prob(with_replies(batch.select(rows), r, vocab.pad)).float()
    torch.testing.assert_close(lp, want, atol=1e-4, rtol=1e-4)


def test_reinforce_pushes_up_the_better_sample():
    from pipeline.learners.rl import reinforce

    logits = torch.zeros(2, requires_grad=True)
    loss, adv = reinforce(torch.log_softmax(logits, 0), torch.tensor([1.0, 0.0]))
    assert adv.tolist() == [0.5, -0.5]
    loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # gradient descent raises the rewarded one


def test_reinforce_with_k_samples_baselines_each_context_on_its_own_mean():
    from pipeline.learners.rl import reinforce

    # two contexts x 2 samples: the second context is "easy" (high rewards for both replies)
    _, adv = reinforce(torch.zeros(4), torch.tensor([1.0, 0.0, 11.0, 10.0]), samples=2)
    assert adv.tolist() == [0.5, -0.5, 0.5, -0.5]
    _, batch_mean = reinforce(torch.zeros(4), torch.tensor([1.0, 0.0, 11.0, 10.0]))
    assert batch_mean.tolist() == [-4.5, -5.5, 5.5, 4.5]  # the batch mean mixes the contexts' offsets


def test_deeprl_samples_k_replies_per_context(data_dir, vocab, monkeypatch):
    from pipeline.learners import rl as rl_module

    rl, ds = rl_setup(data_dir, vocab, samples=3)
    policy, _ = make("seq2seq", data_dir, vocab, seed=1)
    policy.train()
    seen = {}
    real = rl_module.reinforce

    def spy(log_probs, rewards, samples=1):
        seen.update(rows=len(rewards), samples=samples)
        return real(log_probs, rewards, samples)

    monkeypatch.setattr(rl_module, "reinforce", spy)
    out = rl(policy, ds.collate(list(range(4))), step=0)
    assert seen == {"rows": 12, "samples": 3} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert grads(policy, "decoder") > 0
    with pytest.raises(ValueError, match="samples"):
        rl_module.DeepRLConfig(samples=0)


# -- Adversarial -------------------------------------------------------------------------
def test_discriminator_separates_gold_from_constructed_fakes(data_dir, vocab):
    from pipeline.learners.adversarial import Adversarial, AdversarialConfig
    from pipeline.learners.rl import with_replies

    gen, ds = make("seq2seq", data_dir, vocab)
    torch.manual_seed(0)
    adv = Adversarial(AdversarialConfig(hidden=16, d_lr=0.01), gen)
    gold = ds.collate(list(range(16)))
    # fakes: every context answered with the same constant reply
    fake = with_replies(gold, replies_of(vocab, ["you you you you ."] * 16), vocab.pad)
    losses = [float(adv.d_step(gold, fake)) for _ in range(40)]
    assert losses[-1] < losses[0] * 0.5
    with torch.no_grad():
        adv.discriminator.eval()
        p_gold, p_fake = torch.sigmoid(adv.discriminator(gold)), torch.sigmoid(adv.discriminator(fake))
    assert (p_gold > 0.5).float().mean() > 0.9 and (p_fake < 0.5).float().mean() > 0.9


def test_adversarial_objective_pretrains_d_then_trains_the_generator(data_dir, vocab):
    from pipeline.learners.adversarial import Adversarial, AdversarialConfig

    gen, ds = make("seq2seq", data_dir, vocab)
    adv = Adversarial(AdversarialConfig(hidden=16, d_pretrain_steps=1, max_len=6), gen)
    gen.train()
    batch = ds.collate(list(range(8)))
    d_before = [p.detach().clone() for p in adv.discriminator.parameters()]
    out = adv(gen, batch, step=0)  # D pre-training: the generator takes teacher forcing only
    assert "pg_loss" not in out and torch.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(d_before, adv.discriminator.parameters(), strict=True))
    out = adv(gen, batch, step=1)
    assert {"pg_loss", "reward", "d_loss"} <= set(out) and torch.isfinite(out["loss"])
    gen.zero_grad()
    d_grads = [None if p.grad is None else p.grad.clone() for p in adv.discriminator.parameters()]
    out["loss"].backward()
    assert grads(gen, "decoder") > 0
    for before, p in zip(d_grads, adv.discriminator.parameters(), strict=True):  # G's loss never reaches D
        assert (before is None and p.grad is None) or torch.equal(before, p.grad)
    assert not any(n.startswith("discriminator") for n, _ in gen.named_parameters())


def test_scaled_linear_keeps_its_init_and_moves_scale_times_slower():
    from pipeline.models.dialogwae import ScaledLinear

    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 3)
    torch.manual_seed(0)
    slow = ScaledLinear(6, 3, scale=0.1)
    x = torch.randn(4, 6)
    assert torch.allclose(slow(x), plain(x), atol=1e-6)  # the same function at init
    before = slow.weight.detach() * slow.scale
    opt = torch.optim.Adam(slow.parameters(), lr=1e-2)
    slow(x).sum().backward()
    opt.step()
    moved = (slow.weight.detach() * slow.scale - before).abs()
    assert torch.allclose(moved, torch.full_like(moved, 1e-3), rtol=1e-3)  # Adam's first step: lr x scale


def test_deeprl_curriculum_forces_the_gold_prefix_and_anneals_to_zero(data_dir, vocab):
    from pipeline.learners.rl import DeepRLConfig, sample_replies

    cfg = DeepRLConfig(curriculum_tokens=4, curriculum_steps=100)
    assert [cfg.curriculum(s) for s in (0, 30, 50, 76, 100, 500)] == [4, 3, 2, 1, 0, 0]
    with pytest.raises(ValueError, match="curriculum"):
        DeepRLConfig(curriculum_steps=0)
    rl, ds = rl_setup(data_dir, vocab, curriculum_tokens=3, curriculum_steps=10)
    policy, _ = make("seq2seq", data_dir, vocab, seed=1)
    batch = ds.collate(list(range(8)))
    a = sample_replies(policy, batch, 6, generator=torch.Generator().manual_seed(5), prefix=batch.response[:, :3])
    gold = batch.response[:, :3]
    assert torch.equal(a[:, :3][gold != vocab.pad], gold[gold != vocab.pad])  # the gold prefix, as given
    # the forced tokens carry no policy gradient: with the whole reply forced, PG is 0
    policy.train()
    rl.cfg.mle_weight = 0.0
    rl.cfg.curriculum_tokens, rl.cfg.max_len = 50, 6
    out = rl(policy, batch, step=0)
    assert out["curriculum_tokens"].item() == 50 and out["pg_loss"].item() == 0.0
    out = rl(policy, batch, step=10)  # annealed to 0: every sampled token is an action
    assert out["curriculum_tokens"].item() == 0 and out["pg_loss"].item() != 0.0


def test_a_runs_own_model_keys_reach_its_model():
    """`seq2seq_history_cvae: {model: cvae, latent: 32}` trains latent 32, not cvae.py's
    default: keys of a run section that only the architecture takes were once dropped."""
    from pipeline.models import run_model_params

    params = {"model": {"hidden": 16}, "cvae": {"bow_weight": 0.5},
              "cvae_run": {"model": "cvae", "context": "history", "latent": 32, "kl_anneal_steps": 7,
                           "train": {"lr": 0.1}},
              "gcl_variant": {"reference": "cvae_run", "gcl": {"k": 2}, "train": {"lr": 0.2}, "latent": 8}}
    got = run_model_params(params, "cvae_run")
    assert (got["latent"], got["kl_anneal_steps"], got["context"], got["hidden"], got["bow_weight"]) == (
        32, 7, "history", 16, 0.5)
    assert "train" not in got and "model" not in got
    variant = run_model_params(params, "gcl_variant", "cvae")
    assert variant["latent"] == 8 and not {"gcl", "train", "reference"} & set(variant)


def test_reward_control_averages_each_source_over_the_same_rows(data_dir, vocab):
    from pipeline.learners.reward_control import constant, reward_table

    rl, ds = rl_setup(data_dir, vocab)
    sources = {"gold": lambda b: b.response, "dull": constant(vocab, "i do not know .")}
    table = reward_table(rl, ds, sources, rows=10, batch_size=4)
    assert set(table) == {"gold", "dull"} and set(table["gold"]) == {
        "ease", "flow", "coherence", "coherence_forward", "coherence_backward", "reward"}
    assert table["gold"]["coherence"] == pytest.approx(
        table["gold"]["coherence_forward"] + table["gold"]["coherence_backward"], rel=1e-5)
    # by hand over all 10 rows at once: the batch size must not matter
    batch = ds.collate(list(range(10)))
    want = rl.rewards(batch, constant(vocab, "i do not know .")(batch))
    assert table["dull"]["reward"] == pytest.approx(float(want["reward"].mean()), rel=1e-4)
    w = rl.cfg
    assert table["gold"]["reward"] == pytest.approx(
        w.ease_weight * table["gold"]["ease"] + w.flow_weight * table["gold"]["flow"]
        + w.coherence_weight * table["gold"]["coherence"], rel=1e-5)


def test_coherence_forward_weighs_only_r3s_forward_half(data_dir, vocab):
    """coherence_forward 0 leaves r3 = the backward half (the mode-seeking forward half off);
    the other terms and the halves themselves do not move."""
    from pipeline.learners.rl import DeepRLConfig

    paper, _ = rl_setup(data_dir, vocab)
    backward_only, ds = rl_setup(data_dir, vocab, coherence_forward=0.0)
    batch = ds.collate(list(range(6)))
    a, b = paper.rewards(batch, batch.response), backward_only.rewards(batch, batch.response)
    torch.testing.assert_close(a["coherence"], a["coherence_forward"] + a["coherence_backward"])
    torch.testing.assert_close(b["coherence"], b["coherence_backward"])
    for term in ("ease", "flow", "coherence_forward", "coherence_backward"):
        torch.testing.assert_close(a[term], b[term])
    assert not torch.allclose(a["reward"], b["reward"])
    with pytest.raises(ValueError, match="coherence_forward"):
        DeepRLConfig(coherence_forward=-1.0)


def test_sample_categorical_draws_each_row_from_its_own_distribution_never_a_zero():
    from pipeline.learners.rl import sample_categorical

    probs = torch.tensor([[0.0, 0.1, 0.6, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(20_000, 1)
    tok = sample_categorical(probs, torch.Generator().manual_seed(0))
    first, second = tok[0::2], tok[1::2]
    assert torch.equal(second, torch.full_like(second, 4))
    share = torch.bincount(first, minlength=5).float() / len(first)
    assert share[0] == 0 and share[4] == 0
    torch.testing.assert_close(share[1:4], torch.tensor([0.1, 0.6, 0.3]), atol=0.01, rtol=0)
    assert torch.equal(tok, sample_categorical(probs, torch.Generator().manual_seed(0)))  # seeded
