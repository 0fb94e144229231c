"""Examples for the generators: token ids in memory, padded batches, seeded batching.

One :class:`Example` per bot turn of ``data/prepared/<split>.parquet``; the optional
inputs (persona, specific words, optimal-persona label, congeneric contexts) are loaded
only when the model asks for them (``Generator.inputs``). Batches are :class:`Batch`
dataclasses of padded LongTensors and boolean masks (True = real token).

Conventions every model relies on:
- ``response`` ends with ``</s>`` and has no ``<s>``; the decoder input is
  ``<s> + response[:-1]`` (:meth:`Batch.decoder_input`).
- ``persona_label`` is the index of the optimal persona, ``-1`` for the None label
  (also when the labelled sentence was truncated away by ``max_persona_sentences``).
- ``congeneric[:, 0]`` is the example's own X~; ``congeneric[:, 1:]`` its K-1 most
  similar training X~ (methods §2, PDNet).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline import schema
from pipeline.io import InputError, read_parquet
from pipeline.preprocessing.text import gcl_context

log = logging.getLogger(__name__)

# Inputs a model may ask for (Generator.inputs).
PERSONA, SPECIFIC_WORDS, PERSONA_LABEL, CONGENERIC = "persona", "specific_words", "persona_label", "congeneric"
# Persona selection priors, test-time signals aligned with ``persona`` (Batch.persona_prior):
# cos(X, p_i) of the persona_labels encoder, or the bilinear selector's logits on its vectors
# (stages.persona_prior). Input -> (data dir, column, what writes it).
PERSONA_PRIOR, BILINEAR_PRIOR = "persona_prior", "bilinear_prior"
PRIORS = {PERSONA_PRIOR: ("persona_labels", "query_similarities", "dvc repro persona_labels"),
          BILINEAR_PRIOR: ("persona_prior", "bilinear_logits", "python -m stages.persona_prior")}
INPUTS = frozenset({PERSONA, SPECIFIC_WORDS, PERSONA_LABEL, CONGENERIC, *PRIORS})  # any a model may ask for
ALL_INPUTS = INPUTS - {BILINEAR_PRIOR}  # the most one model reads: one prior
CONTEXTS = ("query", "history")  # DataConfig.context


class Vocab:
    """Token <-> id, ids being row positions of ``vocab.parquet`` (specials first)."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = list(tokens)
        if tuple(self.itos[: len(schema.SPECIALS)]) != schema.SPECIALS:
            raise ValueError(f"vocabulary must start with {schema.SPECIALS}")
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate tokens in vocabulary")
        self.pad, self.unk, self.bos, self.eos, self.key = (
            self.stoi[t] for t in (schema.PAD, schema.UNK, schema.BOS, schema.EOS, schema.KEY)
        )

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        table = read_parquet(path, columns=["token"])
        try:
            return cls(table.column("token").to_pylist())
        except ValueError as e:
            raise InputError(path, str(e)) from None

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int | None = None, eos: bool = False) -> np.ndarray:
        """Space-tokenised text -> int64 ids (unknown -> <unk>); truncated to max_len
        tokens keeping the start, then </s> appended if asked (not counted in max_len)."""
        ids = [self.stoi.get(t, self.unk) for t in text.split()]
        if max_len is not None:
            ids = ids[:max_len]
        if eos:
            ids.append(self.eos)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text, stopping at </s> and skipping <pad>/<s>."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            out.append(self.itos[i])
        return " ".join(out)


@dataclass(frozen=True)
class DataConfig:
    """Truncation and which optional inputs to load (from the ``model`` params)."""

    # query: the partner's last utterance X (PEDNet's setting); history: every earlier
    # utterance of both speakers joined by <eot> (the GCL paper's setting, text.gcl_context)
    context: str = "query"
    max_context_tokens: int = 40  # the context keeps its LAST tokens (closest to the response)
    max_response_tokens: int = 30  # before </s>
    max_persona_tokens: int = 20
    max_persona_sentences: int = 5
    congeneric_k: int = 15  # K: own X~ + K-1 retrieved (methods §2)
    inputs: frozenset[str] = frozenset()

    def __post_init__(self):
        if self.context not in CONTEXTS:
            raise InputError("params.yaml", f"model.context: expected one of {', '.join(CONTEXTS)}, got {self.context!r}")

    @classmethod
    def from_params(cls, params: dict, inputs: frozenset[str] | set[str] = frozenset()) -> DataConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"inputs"}
        return cls(**{k: params[k] for k in names if k in params}, inputs=frozenset(inputs))


@dataclass
class Example:
    example_id: str
    query: np.ndarray
    response: np.ndarray  # ends with </s>
    persona: list[np.ndarray] = field(default_factory=list)
    specific_words: np.ndarray | None = None
    persona_label: int = -1
    congeneric: list[np.ndarray] = field(default_factory=list)
    persona_prior: np.ndarray | None = None  # [M] a selection prior (PRIORS), aligned with ``persona``


@dataclass
class Batch:
    """Padded tensors of one batch; optional fields are None unless the model needs them."""

    index: torch.Tensor  # [B] row positions in the split (to join texts back)
    query: torch.Tensor  # [B, Lx]
    query_mask: torch.Tensor  # [B, Lx] bool
    response: torch.Tensor  # [B, Ly], </s>-terminated
    response_mask: torch.Tensor  # [B, Ly] bool
    persona: torch.Tensor | None = None  # [B, M, Lp]
    persona_mask: torch.Tensor | None = None  # [B, M, Lp] bool
    persona_exists: torch.Tensor | None = None  # [B, M] bool (examples have 3..5 sentences)
    specific_words: torch.Tensor | None = None  # [B, S]
    specific_words_mask: torch.Tensor | None = None  # [B, S] bool (all False: no specific word)
    persona_label: torch.Tensor | None = None  # [B], -1 = None label
    congeneric: torch.Tensor | None = None  # [B, K, Lc]
    congeneric_mask: torch.Tensor | None = None  # [B, K, Lc] bool
    persona_prior: torch.Tensor | None = None  # [B, M] float, 0 where no sentence

    def to(self, device: torch.device | str) -> Batch:
        return dataclasses.replace(
            self,
            **{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in dataclasses.fields(self)
               if getattr(self, f.name) is not None},
        )

    def select(self, idx: torch.Tensor) -> Batch:
        """Rows ``idx`` of every field (e.g. to swap candidates in, or split a batch)."""
        idx = idx.to(self.index.device)
        return dataclasses.replace(
            self,
            **{f.name: getattr(self, f.name).index_select(0, idx) for f in dataclasses.fields(self)
               if getattr(self, f.name) is not None},
        )

    @property
    def size(self) -> int:
        return self.index.shape[0]

    def decoder_input(self, bos: int) -> torch.Tensor:
        """Teacher-forcing input ``<s> y_1 .. y_{T-1}`` aligned with ``response``."""
        start = torch.full_like(self.response[:, :1], bos)
        return torch.cat([start, self.response[:, :-1]], dim=1)


def _pad(seqs: Sequence[np.ndarray], pad: int, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    n = max([min_len, *(len(s) for s in seqs)])
    out = np.full((len(seqs), n), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    ids = torch.from_numpy(out)
    return ids, ids != pad


def _pad2(groups: Sequence[Sequence[np.ndarray]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B][M][L] ragged -> [B, M, L] ids, [B, M, L] mask, [B, M] exists."""
    m = max([1, *(len(g) for g in groups)])
    n = max([1, *(len(s) for g in groups for s in g)])
    out = np.full((len(groups), m, n), pad, dtype=np.int64)
    exists = np.zeros((len(groups), m), dtype=bool)
    for i, g in enumerate(groups):
        for j, s in enumerate(g):
            out[i, j, : len(s)] = s
            exists[i, j] = len(s) > 0
    ids = torch.from_numpy(out)
    return ids, ids != pad, torch.from_numpy(exists)


def collate(examples: Sequence[Example], index: Sequence[int], pad: int, inputs: frozenset[str]) -> Batch:
    query, query_mask = _pad([e.query for e in examples], pad)
    response, response_mask = _pad([e.response for e in examples], pad)
    batch = Batch(torch.as_tensor(list(index), dtype=torch.long), query, query_mask, response, response_mask)
    if PERSONA in inputs:
        batch.persona, batch.persona_mask, batch.persona_exists = _pad2([e.persona for e in examples], pad)
    if SPECIFIC_WORDS in inputs:
        batch.specific_words, batch.specific_words_mask = _pad([e.specific_words for e in examples], pad)
    if PERSONA_LABEL in inputs:
        batch.persona_label = torch.as_tensor([e.persona_label for e in examples], dtype=torch.long)
    if CONGENERIC in inputs:
        batch.congeneric, batch.congeneric_mask, _ = _pad2([e.congeneric for e in examples], pad)
    if inputs & PRIORS.keys():
        prior = np.zeros((len(examples), max([1, *(len(e.persona) for e in examples)])), dtype=np.float32)
        for i, e in enumerate(examples):
            prior[i, : len(e.persona_prior)] = e.persona_prior
        batch.persona_prior = torch.from_numpy(prior)
    return batch


class DialogueDataset:
    """All examples of one split, as id arrays, plus the texts needed to report generations."""

    def __init__(self, examples: list[Example], texts: dict[str, list], vocab: Vocab, config: DataConfig):
        self.examples = examples
        self.texts = texts  # example_id, persona, query, response columns (generation report)
        self.vocab = vocab
        self.config = config

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def collate(self, index: Sequence[int]) -> Batch:
        return collate([self.examples[i] for i in index], index, self.vocab.pad, self.config.inputs)

    def collate_pairs(self, context_rows: Sequence[int], response_rows: Sequence[int]) -> Batch:
        """Batch of pairs (context of row a, response of row b), e.g. GCL's candidate pairs:
        everything but the response (persona, specific words, ...) comes with the context."""
        if len(context_rows) != len(response_rows):
            raise ValueError("context_rows and response_rows differ in length")
        batch = self.collate(context_rows)
        response, response_mask = _pad([self.examples[i].response for i in response_rows], self.vocab.pad)
        return dataclasses.replace(batch, response=response, response_mask=response_mask)

    def lengths(self) -> np.ndarray:
        """Tokens per example (query + response), the bucketing key."""
        return np.asarray([len(e.query) + len(e.response) for e in self.examples], dtype=np.int64)


def _check_ids(path: Path, ids: list[str], expected: list[str]) -> None:
    if ids != expected:
        bad = next(i for i, (a, b) in enumerate(zip(ids, expected, strict=True)) if a != b) if len(ids) == len(expected) else None
        msg = (f"row {bad}: example_id {ids[bad]!r} != prepared {expected[bad]!r}" if bad is not None
               else f"{len(ids)} rows, prepared split has {len(expected)}")
        raise InputError(path, f"not aligned with data/prepared: {msg}")


def load_split(
    split: str,
    vocab: Vocab,
    config: DataConfig,
    data_dir: str | Path = "data",
) -> DialogueDataset:
    """Read ``<data_dir>/prepared/<split>.parquet`` and the per-split inputs ``config`` asks for."""
    data_dir = Path(data_dir)
    inputs = config.inputs
    if unknown := inputs - INPUTS:
        raise ValueError(f"unknown inputs {sorted(unknown)}")
    if config.context != "query" and CONGENERIC in inputs:
        raise InputError("params.yaml", "model.context: PDNet's congeneric contexts are single-turn; use query")
    cols = ["example_id", "persona", "history", "query", "response"]
    prepared = read_parquet(data_dir / "prepared" / f"{split}.parquet", columns=cols).to_pydict()
    ids = prepared["example_id"]
    n = len(ids)
    enc = vocab.encode

    def keep_last(a: np.ndarray) -> np.ndarray:
        return a[-config.max_context_tokens :] if config.max_context_tokens else a

    if config.context == "history":  # the bot's opening turn keeps its __silence__ query
        contexts = [" ".join(gcl_context(h, q, config.max_context_tokens)) or q
                    for h, q in zip(prepared["history"], prepared["query"], strict=True)]
    else:
        contexts = prepared["query"]
    examples = [
        Example(
            example_id=ids[i],
            query=keep_last(enc(contexts[i])),
            response=enc(prepared["response"][i], config.max_response_tokens, eos=True),
        )
        for i in range(n)
    ]
    if PERSONA in inputs:
        for ex, persona in zip(examples, prepared["persona"], strict=True):
            ex.persona = [enc(p, config.max_persona_tokens) for p in persona[: config.max_persona_sentences]]
    if SPECIFIC_WORDS in inputs or CONGENERIC in inputs:
        path = data_dir / "pmi" / f"{split}.parquet"
        pmi = read_parquet(path, columns=["example_id", "specific_words", "masked_query"]).to_pydict()
        _check_ids(path, pmi["example_id"], ids)
        if SPECIFIC_WORDS in inputs:
            for ex, words in zip(examples, pmi["specific_words"], strict=True):
                ex.specific_words = enc(" ".join(words or []))
    priors = sorted(inputs & PRIORS.keys())
    if len(priors) > 1:
        raise ValueError(f"inputs {' and '.join(priors)}: a model reads one selection prior")
    if priors and PERSONA not in inputs:
        raise ValueError(f"input {priors[0]} needs input {PERSONA}")
    if PERSONA_LABEL in inputs:
        path = data_dir / "persona_labels" / f"{split}.parquet"
        labels = read_parquet(path, columns=["example_id", "optimal_persona"]).to_pydict()
        _check_ids(path, labels["example_id"], ids)
        dropped = 0
        for ex, label in zip(examples, labels["optimal_persona"], strict=True):
            if label is not None and label >= config.max_persona_sentences:
                dropped += 1
                label = None
            ex.persona_label = -1 if label is None else int(label)
        if dropped:
            log.warning("%s: %d optimal-persona labels point past max_persona_sentences -> None", split, dropped)
    if priors:
        folder, column, writer = PRIORS[priors[0]]
        path = data_dir / folder / f"{split}.parquet"
        if not path.exists():
            raise InputError(path, f"file not found: the {priors[0]} input is written by `{writer}`")
        prior = read_parquet(path, columns=["example_id", column]).to_pydict()
        _check_ids(path, prior["example_id"], ids)
        for i, (ex, values, persona) in enumerate(zip(examples, prior[column], prepared["persona"], strict=True)):
            if len(values or []) != len(persona):
                raise InputError(path, f"{len(values or [])} {column} for {len(persona)} persona sentences", i)
            ex.persona_prior = np.asarray(values[: config.max_persona_sentences], dtype=np.float32)
    if CONGENERIC in inputs:
        own = [keep_last(enc(q)) for q in pmi["masked_query"]]
        if split == "train":
            train_masked = own
        else:
            tpath = data_dir / "pmi" / "train.parquet"
            train_masked = [keep_last(enc(q)) for q in read_parquet(tpath, columns=["masked_query"])
                            .column("masked_query").to_pylist()]
        path = data_dir / "congeneric" / f"{split}.parquet"
        cong = read_parquet(path, columns=["example_id", "congeneric_rows"]).to_pydict()
        _check_ids(path, cong["example_id"], ids)
        k = config.congeneric_k
        for i, (ex, rows) in enumerate(zip(examples, cong["congeneric_rows"], strict=True)):
            rows = list(rows or [])[: k - 1]
            if len(rows) < k - 1:
                raise InputError(path, f"{len(rows)} congeneric rows, congeneric_k={k} needs {k - 1}", i)
            if rows and (min(rows) < 0 or max(rows) >= len(train_masked)):
                raise InputError(path, f"congeneric row out of range 0..{len(train_masked) - 1}", i)
            ex.congeneric = [own[i], *(train_masked[r] for r in rows)]
    log.info("loaded %s: %d examples (inputs: %s)", split, n, ", ".join(sorted(inputs)) or "query/response")
    texts = {"example_id": ids, "persona": prepared["persona"], "query": contexts,
             "response": prepared["response"]}
    return DialogueDataset(examples, texts, vocab, config)


def batch_indices(
    lengths: np.ndarray,
    batch_size: int,
    generator: torch.Generator | None = None,
    bucket: bool = True,
    bucket_factor: int = 50,
) -> list[list[int]]:
    """Batches of example indices. With a generator: shuffled, and with ``bucket`` sorted
    by length inside windows of ``bucket_factor`` batches (less padding), then the batch
    order shuffled. Without a generator: in order (evaluation). Deterministic given the
    generator's state; ties sorted by index."""
    n = len(lengths)
    if generator is None:
        order = list(range(n))
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    order = torch.randperm(n, generator=generator).numpy()
    if bucket:
        window = batch_size * bucket_factor
        chunks = []
        for s in range(0, n, window):
            w = order[s : s + window]
            chunks.append(w[np.lexsort((w, lengths[w]))])  # stable: length, then index
        order = np.concatenate(chunks) if chunks else order
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches of example indices sorted by length (ties by index), for passes without
    gradients (validation, decoding, scoring): each batch is padded to its own longest, so
    little padding is computed; callers put results back by index. Deterministic."""
    order = np.lexsort((np.arange(len(lengths)), np.asarray(lengths)))
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def shard(batches: list[list[int]], rank: int, world: int, equal: bool = True) -> list[list[int]]:
    """This rank's batches (DistributedDataParallel). ``equal``: every rank gets the same
    number of batches (the last few are dropped), or DDP would wait forever."""
    if world <= 1:
        return batches
    if equal:
        batches = batches[: len(batches) // world * world]
    return batches[rank::world]


def iterate(dataset: DialogueDataset, batches: list[list[int]]) -> Iterator[Batch]:
    for index in batches:
        yield dataset.collate(index)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
