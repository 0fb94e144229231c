"""MSN, the Multi-hop Selector Network (Yuan et al. 2019): GCL's matching model (methods §3).

Input: the last N utterances of a multi-turn context, each padded/truncated to L tokens,
and a response of L tokens. Shapes: B batch, N utterances, L words, D model width.

1. Context selector, hops h = 1..H: the key is the mean of the last h utterances'
   embeddings (self-attended); a word-level score (bilinear alignment of every utterance
   word with every key word, max-pooled both ways, a linear layer, softmax over
   utterances) and an utterance-level score (cosine of mean vectors) are averaged with
   weight alpha; a linear layer combines the hops into one score per utterance.
   Utterances with sigmoid(score) < gamma are zeroed, the others scaled by the score.
2. Per utterance vs the response, six L x L matching maps: bilinear and cosine on the
   raw embeddings, on self-attended sequences and on cross-attended sequences.
3. A 3-layer CNN (conv 3x3 + max-pool 2, 2, 3) turns the 6-channel maps into one vector
   per utterance, a GRU runs over the utterances, a linear layer gives the logit;
   q = sigmoid(logit) is the matching probability.

Paper vs authors' code: the paper's bilinear forms are full d x d tensors; the authors'
code writes ``einsum("bud,dd,brd->bur")``, which reads only the diagonal.
``bilinear="full"`` (default) is the paper, ``"diagonal"`` the code. The attentive module
has the paper's layer normalisation (the code leaves it off by default). Unlike the code,
padding is masked in attention, pooling and the utterance GRU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.models.layers import NEG_INF, masked_mean


@dataclass
class MSNConfig:
    vocab_size: int
    embedding_dim: int = 300
    dim: int | None = 100  # model width D; None = embedding_dim (paper: 200-d word2vec, no projection)
    max_utterances: int = 5  # N (paper 10)
    max_words: int = 24  # L, for utterances and responses (paper 50)
    hops: int = 3
    selector_hidden: int = 10  # h of the word selector's bilinear tensor W in R^{D x D x h}
    alpha: float = 0.5  # word-level vs utterance-level selector score
    gamma: float = 0.3  # utterances with sigmoid(score) < gamma are masked
    bilinear: str = "full"  # full (paper) | diagonal (authors' code)
    channels: tuple[int, int, int] = (16, 32, 64)
    match_dim: int = 300  # per-utterance matching vector (paper 300)
    gru_hidden: int = 300
    dropout: float = 0.2
    freeze_embeddings: bool = False
    pad: int = 0

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.bilinear not in ("full", "diagonal"):
            raise ValueError(f"bilinear {self.bilinear!r}: full | diagonal")
        if len(self.channels) != 3:
            raise ValueError("channels: three CNN layers")
        if cnn_output_size(self.max_words) < 1:
            raise ValueError(f"max_words {self.max_words} too short for the 3-layer CNN (need >= 16)")
        if not 1 <= self.hops <= self.max_utterances:
            raise ValueError(f"hops {self.hops} must be in 1..max_utterances ({self.max_utterances})")

    @property
    def width(self) -> int:
        return self.dim or self.embedding_dim

    @classmethod
    def from_params(cls, params: dict, vocab_size: int, embedding_dim: int) -> MSNConfig:
        names = {f.name for f in fields(cls)} - {"vocab_size", "embedding_dim"}
        return cls(vocab_size=vocab_size, embedding_dim=embedding_dim,
                   **{k: v for k, v in params.items() if k in names})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)  # plain types: weights_only-loadable
        return d


def cnn_output_size(length: int) -> int:
    """Side of the map after conv3/pool2, conv3/pool2, conv3/pool3 (ceil pooling)."""
    for pool in (2, 2, 3):
        length -= 2
        if length < 1:
            return 0
        length = math.ceil(length / pool)
    return length


class AttentiveModule(nn.Module):
    """DAM's attentive module: x = LN(Q + softmax(QKᵀ/√d) V); out = LN(x + FFN(x)); padded
    query positions are zeroed. Keys that are all padding get a uniform (harmless) softmax."""

    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, q, k, v, q_mask, k_mask):
        scores = torch.bmm(q, k.transpose(1, 2)) * self.scale
        scores = scores.masked_fill(~k_mask.unsqueeze(1), NEG_INF)
        x = self.norm1(q + torch.bmm(torch.softmax(scores, -1), v))
        x = self.norm2(x + self.ffn(x))
        return x * q_mask.unsqueeze(-1).to(x.dtype)


def cosine_map(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[X, La, D] x [X, Lb, D] -> [X, La, Lb] cosine similarities (0 for zero vectors)."""
    a = a / (a.norm(dim=-1, keepdim=True) + eps)
    b = b / (b.norm(dim=-1, keepdim=True) + eps)
    return torch.bmm(a, b.transpose(1, 2))


class MSN(nn.Module):
    def __init__(self, config: MSNConfig, embeddings: np.ndarray | None = None):
        super().__init__()
        self.config = c = config
        d = c.width
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=c.pad)
        if embeddings is not None:
            if embeddings.shape != (c.vocab_size, c.embedding_dim):
                raise ValueError(f"embeddings {embeddings.shape} != ({c.vocab_size}, {c.embedding_dim})")
            with torch.no_grad():
                self.embedding.weight.copy_(torch.from_numpy(np.asarray(embeddings, dtype=np.float32)))
                self.embedding.weight[c.pad].zero_()
        self.embedding.weight.requires_grad_(not c.freeze_embeddings)
        # No bias: <pad> stays the zero vector, so padding adds nothing to maps and means.
        self.project = nn.Linear(c.embedding_dim, d, bias=False) if d != c.embedding_dim else None

        # Context selector (one attentive module for utterances and keys, as the authors).
        self.selector_attention = AttentiveModule(d)
        self.word_bilinear = nn.Parameter(torch.empty(d, d, c.selector_hidden))
        self.word_v = nn.Parameter(torch.empty(c.selector_hidden))
        self.word_linear = nn.Linear(2 * c.max_words, 1)
        self.hop_linear = nn.Linear(c.hops, 1)

        # Matching: self-attention (utterance, response) and cross-attention (u->r, r->u).
        self.attend_utterance = AttentiveModule(d)
        self.attend_response = AttentiveModule(d)
        self.attend_u2r = AttentiveModule(d)
        self.attend_r2u = AttentiveModule(d)
        self.bilinear = nn.ParameterList([nn.Parameter(torch.empty(d, d)) for _ in range(3)])

        c1, c2, c3 = c.channels
        self.cnn = nn.Sequential(
            nn.Conv2d(6, c1, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c2, c3, 3), nn.ReLU(), nn.MaxPool2d(3, ceil_mode=True),
        )
        side = cnn_output_size(c.max_words)
        self.match_linear = nn.Linear(c3 * side * side, c.match_dim)
        self.gru = nn.GRU(c.match_dim, c.gru_hidden, batch_first=True)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.gru_hidden, 1)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_normal_(self.word_bilinear.view(self.word_bilinear.shape[0], -1))
        nn.init.normal_(self.word_v, 0.0, 1.0 / math.sqrt(self.config.selector_hidden))
        for a in self.bilinear:
            nn.init.xavier_normal_(a)
        for m in self.cnn:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
        nn.init.xavier_normal_(self.match_linear.weight)
        nn.init.orthogonal_(self.gru.weight_hh_l0)
        nn.init.xavier_normal_(self.gru.weight_ih_l0)

    # -- pieces ---------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        return self.project(x) if self.project is not None else x

    def _bilinear_map(self, a: torch.Tensor, weight: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a W bᵀ: [X, La, D], [D, D], [X, Lb, D] -> [X, La, Lb]."""
        if self.config.bilinear == "diagonal":
            return torch.bmm(a * torch.diagonal(weight), b.transpose(1, 2))
        return torch.bmm(a @ weight, b.transpose(1, 2))

    def word_selector(self, key, key_mask, context, word_mask, utt_mask):
        """key [B, L, D], context [B, N, L, D] (self-attended) -> s1 [B, N] (softmax over N)."""
        d = key.shape[-1]
        if self.config.bilinear == "diagonal":
            kw = key.unsqueeze(-1) * torch.diagonal(self.word_bilinear).t()  # [B, L, D, h]
        else:
            kw = torch.einsum("bje,deh->bjdh", key, self.word_bilinear)  # key-side first: shared by N
        align = torch.einsum("bnid,bjdh->bnijh", context, kw) / math.sqrt(d)
        align = torch.tanh(align) @ self.word_v  # [B, N, L(utterance), L(key)]
        pair_mask = word_mask.unsqueeze(-1) & key_mask[:, None, None, :]
        align = align.masked_fill(~pair_mask, NEG_INF)
        per_word = align.max(dim=3).values.masked_fill(~word_mask, 0.0)  # best key word per utterance word
        per_key = align.max(dim=2).values.masked_fill(~key_mask.unsqueeze(1), 0.0)
        logits = self.word_linear(torch.cat([per_word, per_key], -1)).squeeze(-1)
        return torch.softmax(logits.masked_fill(~utt_mask, NEG_INF), -1)

    @staticmethod
    def utterance_selector(key, key_mask, context, word_mask):
        """cosine(mean key word, mean utterance word) -> s2 [B, N]."""
        k = masked_mean(key, key_mask, 1)  # [B, D]
        u = masked_mean(context, word_mask, 2)  # [B, N, D]
        return F.cosine_similarity(u, k.unsqueeze(1).expand_as(u), dim=-1, eps=1e-6)

    def select(self, emb: torch.Tensor, word_mask: torch.Tensor):
        """Multi-hop context selector: -> (re-weighted utterances [B, N, L, D], kept [B, N])."""
        c = self.config
        b, n, length, d = emb.shape
        utt_mask = word_mask.any(-1)
        flat_mask = word_mask.view(b * n, length)
        flat = emb.view(b * n, length, d)
        context = self.selector_attention(flat, flat, flat, flat_mask, flat_mask).view(b, n, length, d)
        hop_scores = []
        for h in range(1, c.hops + 1):
            last = utt_mask[:, n - h :]  # utterances are left-padded: the last h are the newest
            key = masked_mean(emb[:, n - h :].transpose(1, 2), last.unsqueeze(1).expand(b, length, h), 2)
            key_mask = (word_mask[:, n - h :] & last.unsqueeze(-1)).any(1)
            key = self.selector_attention(key, key, key, key_mask, key_mask)
            s1 = self.word_selector(key, key_mask, context, word_mask, utt_mask)
            s2 = self.utterance_selector(key, key_mask, context, word_mask)
            hop_scores.append(c.alpha * s1 + (1 - c.alpha) * s2)
        score = self.hop_linear(torch.stack(hop_scores, -1)).squeeze(-1)  # [B, N]
        kept = (torch.sigmoid(score) >= c.gamma) & utt_mask
        weight = score * kept.to(score.dtype)
        return emb * weight[:, :, None, None], kept

    # -- model ----------------------------------------------------------------------
    # The selector and the utterance self-attention depend on the context alone, the
    # response self-attention on the response alone: encode each once and match many
    # (context, response) pairs by index (group scoring, positive + negative in training).
    def encode_context(self, utterances: torch.Tensor) -> dict[str, torch.Tensor]:
        """utterances [C, N, L] (left-padded: empty utterances first) -> context state."""
        c = self.config
        cnum, n, length = utterances.shape
        if n != c.max_utterances or length != c.max_words:
            raise ValueError(f"utterances must be [B, {c.max_utterances}, {c.max_words}], got {list(utterances.shape)}")
        word_mask = utterances != c.pad
        emb, _ = self.select(self.embed(utterances), word_mask)
        flat, flat_mask = emb.view(cnum * n, length, -1), word_mask.view(cnum * n, length)
        hu = self.attend_utterance(flat, flat, flat, flat_mask, flat_mask)
        return {"emb": emb, "hu": hu.view_as(emb), "word_mask": word_mask,
                "counts": word_mask.any(-1).sum(1).clamp(min=1)}

    def encode_response(self, response: torch.Tensor) -> dict[str, torch.Tensor]:
        """response [R, L] -> response state."""
        if response.shape[1] != self.config.max_words:
            raise ValueError(f"responses must be [B, {self.config.max_words}], got {list(response.shape)}")
        mask = response != self.config.pad
        emb = self.embed(response)
        return {"emb": emb, "hr": self.attend_response(emb, emb, emb, mask, mask), "mask": mask}

    def match(self, context: dict, response: dict, context_index: torch.Tensor | None = None,
              response_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [P] of the pairs (context[context_index[p]], response[response_index[p]])
        (None = the identity: context i with response i)."""
        if context_index is not None:
            context = {k: v.index_select(0, context_index) for k, v in context.items()}
        if response_index is not None:
            response = {k: v.index_select(0, response_index) for k, v in response.items()}
        emb, hu, word_mask = context["emb"], context["hu"], context["word_mask"]
        p, n, length, d = emb.shape
        x = p * n
        utt, hu, umask = emb.reshape(x, length, d), hu.reshape(x, length, d), word_mask.reshape(x, length)
        resp, hr, rmask = (response[k].repeat_interleave(n, 0) for k in ("emb", "hr", "mask"))
        hur = self.attend_u2r(utt, resp, resp, umask, rmask)
        hru = self.attend_r2u(resp, utt, utt, rmask, umask)
        a1, a2, a3 = self.bilinear
        maps = torch.stack([
            self._bilinear_map(utt, a1, resp), cosine_map(utt, resp),
            self._bilinear_map(hu, a2, hr), cosine_map(hu, hr),
            self._bilinear_map(hur, a3, hru), cosine_map(hur, hru),
        ], 1)  # [X, 6, L, L]
        v = torch.tanh(self.match_linear(self.cnn(maps).flatten(1))).view(p, n, -1)
        # The GRU reads only real utterances: move them to the front, then pack.
        counts = context["counts"]
        order = (torch.arange(n, device=v.device).unsqueeze(0) + (n - counts).unsqueeze(1)) % n
        v = v.gather(1, order.unsqueeze(-1).expand_as(v))
        packed = pack_padded_sequence(v, counts.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.out(self.dropout(h[-1])).squeeze(-1)

    def forward(self, utterances: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """utterances [B, N, L], response [B, L] -> logits [B]; q = sigmoid(logit)."""
        return self.match(self.encode_context(utterances), self.encode_response(response))

    def probability(self, utterances: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(utterances, response))

    def pair_logits(self, batch: dict) -> torch.Tensor:
        """A batch of contexts ``utterances`` [C, N, L], responses ``responses`` [R, L] and
        pairs ``pair_context``/``pair_response`` [P] (indices into them) -> logits [P]."""
        return self.match(self.encode_context(batch["utterances"]), self.encode_response(batch["responses"]),
                          batch["pair_context"], batch["pair_response"])

    def loss(self, batch: dict, **ctx) -> dict[str, torch.Tensor]:
        """BCE over the batch's pairs; also the number classified right at q = 0.5."""
        logits = self.pair_logits(batch)
        label = batch["label"].to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        correct = ((logits > 0).to(label.dtype) == label).sum()
        return {"loss": loss, "correct": correct.detach(), "n_pairs": torch.tensor(label.numel())}

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Plain dict of tensors and built-in types: ``torch.load(weights_only=True)`` reads it."""
        return {"kind": "msn", "config": self.config.to_dict(), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> MSN:
        model = cls(MSNConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model


def context_tensor(contexts: list[list[np.ndarray]], max_utterances: int, max_words: int,
                   pad: int = 0) -> torch.Tensor:
    """Token-id utterances (oldest first) -> [B, N, L]: the last N utterances, left-padded
    with empty utterances so the newest is always at position N-1; each utterance keeps
    its first L tokens and is right-padded to exactly L (fixed L x L matching maps)."""
    utt = np.full((len(contexts), max_utterances, max_words), pad, dtype=np.int64)
    for i, ctx in enumerate(contexts):
        last = ctx[-max_utterances:]
        offset = max_utterances - len(last)
        for j, u in enumerate(last):
            u = u[:max_words]
            utt[i, offset + j, : len(u)] = u
    return torch.from_numpy(utt)


def response_tensor(responses: list[np.ndarray], max_words: int, pad: int = 0) -> torch.Tensor:
    """Token-id responses -> [B, L] (first L tokens, right-padded)."""
    resp = np.full((len(responses), max_words), pad, dtype=np.int64)
    for i, r in enumerate(responses):
        r = r[:max_words]
        resp[i, : len(r)] = r
    return torch.from_numpy(resp)
