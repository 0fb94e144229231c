"""Shared layers, the dataset and the Seq2Seq / GPMN generators on tiny inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import schema
from pipeline.dataset import (
    ALL_INPUTS,
    DataConfig,
    Vocab,
    batch_indices,
    load_split,
    shard,
    sorted_batches,
)
from pipeline.io import InputError
from pipeline.models import ModelContext, build_model, get_model_class, model_params
from pipeline.models.gpmn import persona_idf
from pipeline.models.layers import (
    Attention,
    Encoder,
    EncoderConfig,
    MemoryHops,
    PersonaEncoder,
    load_embedding_matrix,
)
from tests.generator_checks import check_forward_backward, check_overfits, check_sequence_log_prob
from tests.model_inputs import build_tiny, tiny_params, write_model_inputs

torch.set_num_threads(1)
MODELS = ["seq2seq", "gpmn"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def vocab(data_dir):
    return Vocab.load(data_dir / "prepared" / "vocab.parquet")


def make_model(name, data_dir, vocab, seed=0, **overrides):
    return build_tiny(name, model_params(tiny_params(model=overrides), name), data_dir, vocab, seed=seed)


# -- dataset -----------------------------------------------------------------------------
def test_vocab_encode_decode(vocab):
    ids = vocab.encode("i have a zzzunseen dog", eos=True)
    assert ids[3] == vocab.unk and ids[-1] == vocab.eos
    assert vocab.decode(ids) == "i have a <unk> dog"
    assert vocab.decode([vocab.bos, *vocab.encode("i have"), vocab.eos, *vocab.encode("dog")]) == "i have"
    assert len(vocab.encode("a b c d e", max_len=2, eos=True)) == 3


def test_vocab_rejects_missing_specials(tmp_path):
    path = tmp_path / "vocab.parquet"
    pq.write_table(pa.table({"token": ["i", "you"], "count": [1, 1]}), path)
    with pytest.raises(InputError, match="vocab.parquet"):
        Vocab.load(path)


def test_load_split_all_inputs(data_dir, vocab):
    cfg = DataConfig(congeneric_k=4, max_persona_sentences=5, inputs=ALL_INPUTS)
    ds = load_split("valid", vocab, cfg, data_dir)
    pmi = pq.read_table(data_dir / "pmi" / "valid.parquet").to_pylist()
    cong = pq.read_table(data_dir / "congeneric" / "valid.parquet").to_pylist()
    train_pmi = pq.read_table(data_dir / "pmi" / "train.parquet").column("masked_query").to_pylist()
    labels = pq.read_table(data_dir / "persona_labels" / "valid.parquet").column("optimal_persona").to_pylist()
    b = ds.collate([0, 1, 2])
    assert b.congeneric.shape[:2] == (3, 4)
    for j in range(3):
        assert vocab.decode(b.congeneric[j, 0]) == pmi[j]["masked_query"]  # own X~ first
        rows = cong[j]["congeneric_rows"][:3]
        assert [vocab.decode(b.congeneric[j, i + 1]) for i in range(3)] == [train_pmi[r] for r in rows]
        assert b.persona_label[j].item() == (-1 if labels[j] is None else labels[j])
        n = len(ds.texts["persona"][j])
        assert b.persona_exists[j].sum().item() == n
    assert (b.response.gather(1, b.response_mask.sum(1, keepdim=True) - 1) == vocab.eos).all()
    assert -1 in [e.persona_label for e in ds.examples]  # the None label occurs


def test_load_split_loads_only_what_is_asked(data_dir, vocab):
    b = load_split("valid", vocab, DataConfig(), data_dir).collate([0, 1])
    assert b.persona is None and b.congeneric is None and b.persona_label is None


def test_misaligned_input_is_an_input_error(data_dir, vocab, tmp_path):
    import shutil

    bad = tmp_path / "data"
    shutil.copytree(data_dir, bad)
    t = pq.read_table(bad / "pmi" / "valid.parquet")
    pq.write_table(t.slice(1), bad / "pmi" / "valid.parquet")
    with pytest.raises(InputError, match="not aligned"):
        load_split("valid", vocab, DataConfig(inputs=frozenset({"specific_words"})), bad)


def test_too_few_congeneric_rows(data_dir, vocab):
    with pytest.raises(InputError, match="congeneric_k"):
        load_split("valid", vocab, DataConfig(congeneric_k=50, inputs=frozenset({"congeneric"})), data_dir)


def test_batch_indices_deterministic_and_complete():
    lengths = np.random.default_rng(0).integers(1, 30, size=103)
    a = batch_indices(lengths, 8, torch.Generator().manual_seed(3))
    b = batch_indices(lengths, 8, torch.Generator().manual_seed(3))
    c = batch_indices(lengths, 8, torch.Generator().manual_seed(4))
    assert a == b and a != c
    assert sorted(i for batch in a for i in batch) == list(range(103))
    shards = [shard(a, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(a) // 2
    assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))


def test_bucketing_and_sorted_batches_change_no_example():
    """Length buckets (training) and length-sorted batches (validation, decoding, scoring)
    hold every example exactly once; sorted batches pad less than batches in order."""
    lengths = np.random.default_rng(0).integers(1, 60, size=203)
    for batches in (batch_indices(lengths, 16, torch.Generator().manual_seed(1), bucket=True), sorted_batches(lengths, 16)):
        assert sorted(i for b in batches for i in b) == list(range(203))
    ordered = sorted_batches(lengths, 16)
    assert ordered == sorted_batches(lengths, 16)  # deterministic
    flat = [i for b in ordered for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths.tolist())

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    assert padded(ordered) < 0.7 * padded(batch_indices(lengths, 16))


# -- layers ------------------------------------------------------------------------------
def test_encoder_ignores_padding_and_empty_rows():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(4, 6))
    x = torch.randn(1, 3, 4)
    out1, h1 = enc(x, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([x, torch.randn(1, 2, 4)], 1)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    out2, h2 = enc(torch.cat([padded, torch.randn(1, 5, 4)]), torch.cat([mask, torch.zeros_like(mask)]))
    assert out2.shape == (2, 5, 6) and h2.shape == (1, 2, 6)
    torch.testing.assert_close(out2[0, :3], out1[0])
    torch.testing.assert_close(h2[:, 0], h1[:, 0])
    assert out2[0, 3:].abs().sum() == 0 and out2[1].abs().sum() == 0 and h2[:, 1].abs().sum() == 0


def test_persona_encoder_matches_one_call_per_sentence():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(4, 6))
    pe = PersonaEncoder(enc)
    emb = torch.randn(2, 3, 5, 4)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[0, 0, :2] = mask[0, 1, :5] = mask[1, 0, :3] = True  # [0,2], [1,1], [1,2] empty
    out, vec = pe(emb, mask)
    for b, m in [(0, 0), (0, 1), (1, 0)]:
        o, h = enc(emb[b, m : m + 1], mask[b, m : m + 1])
        torch.testing.assert_close(out[b, m], o[0])
        torch.testing.assert_close(vec[b, m], h[-1, 0])
    assert vec[0, 2].abs().sum() == 0 and vec[1, 1:].abs().sum() == 0


def test_attention_masks_and_kinds():
    torch.manual_seed(0)
    keys, q = torch.randn(2, 4, 3), torch.randn(2, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ctx, w = Attention(3, 3, "dot")(q, keys, mask)
    assert w[0, 2:].sum() == 0
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    expected = torch.softmax(keys[0, :2] @ q[0], 0) @ keys[0, :2]
    torch.testing.assert_close(ctx[0], expected)
    ctx3, w3 = Attention(5, 3, "general")(torch.randn(2, 7, 5), keys, mask)  # [B, T, D] queries
    assert ctx3.shape == (2, 7, 3) and w3[0, :, 2:].sum() == 0
    with pytest.raises(ValueError):
        Attention(5, 3, "dot")


def test_memory_hops_equations():
    torch.manual_seed(0)
    mem = torch.randn(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    m1 = torch.randn(1, 4)
    logits, m = MemoryHops(4, hops=3)(m1, mem, mask)
    mk = m1
    for k in range(3):  # prob_k = softmax(m_k·u), o_k = Σ prob u, m_{k+1} = o_k + m_k
        prob = torch.softmax(mem[0, :2] @ mk[0], 0)
        torch.testing.assert_close(torch.softmax(logits[k], -1)[0, :2], prob)
        mk = (prob @ mem[0, :2]).unsqueeze(0) + mk
    torch.testing.assert_close(m, mk)
    assert torch.softmax(logits[-1], -1)[0, 2] == 0
    logits_none, _ = MemoryHops(4, hops=3, bilinear=True, none_slot=True)(m1, mem, mask)
    assert logits_none[-1].shape == (1, 4)  # M + 1 candidates, None last


# -- models ------------------------------------------------------------------------------
def test_unknown_model():
    with pytest.raises(KeyError, match="unknown model"):
        get_model_class("no_such_model")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backbone", [{}, {"layers": 2, "attention": "general", "tie_embeddings": False}])
def test_forward_backward(name, backbone, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab, **backbone)
    check_forward_backward(model, train.collate(range(6)), tied=not backbone)


@pytest.mark.parametrize("name", MODELS)
def test_sequence_log_prob_matches_nll_and_stepwise_decoding(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab)
    model.eval()
    check_sequence_log_prob(model, train.collate([3, 7, 11, 20]), vocab.bos)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_tiny_set(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab, dropout=0.0, hidden=32)
    check_overfits(model, train.collate(range(8)))


def test_gpmn_memories_are_idf_weighted(data_dir, vocab):
    model, train = make_model("gpmn", data_dir, vocab)
    sentences = sorted({s for p in train.texts["persona"] for s in p})
    idf = persona_idf(train.texts["persona"], vocab, len(vocab))
    assert idf[vocab.stoi["i"]] < idf[vocab.stoi["pizza"]]
    assert idf[vocab.stoi["guitar"]] == pytest.approx(np.log(len(sentences) / sum("guitar" in s.split()
                                                                                   for s in sentences)))
    model.eval()
    batch = train.collate([0])
    mem = model.memories(batch)
    ids = batch.persona[0, 0][batch.persona_mask[0, 0]]
    w = idf[ids] / idf[ids].sum()
    torch.testing.assert_close(mem[0, 0], (model.embeddings.weight[ids] * w[:, None]).sum(0))
    # empty persona slots are masked out of the decoder's memory attention
    state = model.encode(train.collate([0, 1]))
    assert state["memory_mask"].dtype == torch.bool


def test_backbone_overrides_and_embedding_width(data_dir, vocab):
    params = model_params(tiny_params(model={"hidden": 8}, gpmn={"hidden": 12}), "gpmn")
    assert params["hidden"] == 12
    emb = load_embedding_matrix(data_dir / "embeddings" / "vectors.parquet", vocab.itos)
    with pytest.raises(ValueError, match="emb_dim"):
        build_model("seq2seq", {**params, "emb_dim": 7}, ModelContext.from_vocab(vocab, emb))


def test_embedding_file_must_match_vocab(data_dir, vocab, tmp_path):
    t = pq.read_table(data_dir / "embeddings" / "vectors.parquet")
    path = tmp_path / "vectors.parquet"
    pq.write_table(t.slice(0, 10).cast(schema.EMBEDDINGS), path)
    with pytest.raises(InputError, match="differ from vocab"):
        load_embedding_matrix(path, vocab.itos)


def test_collate_pairs_swaps_only_the_response(data_dir, vocab):
    ds = load_split("valid", vocab, DataConfig(inputs=frozenset({"persona"})), data_dir)
    b = ds.collate_pairs([0, 1], [5, 0])
    assert vocab.decode(b.query[0]) == ds.texts["query"][0] and vocab.decode(b.response[0]) == ds.texts["response"][5]
    assert torch.equal(b.persona, ds.collate([0, 1]).persona)
    with pytest.raises(ValueError):
        ds.collate_pairs([0], [1, 2])


def test_gpmn_idf_table_weights_by_the_table_and_missing_words_by_idf_missing(data_dir, vocab, tmp_path):
    from pipeline.models.gpmn import table_idf

    idf = table_idf({"pizza": 5.0, "i": 0.1}, vocab, len(vocab), missing=0.5)
    assert idf[vocab.stoi["pizza"]] == 5.0 and idf[vocab.stoi["i"]] == pytest.approx(0.1)
    assert idf[vocab.stoi["guitar"]] == 0.5
    params = {**model_params(tiny_params(model={"hidden": 8}, gpmn={"idf": "table"}), "gpmn"), "emb_dim": 8}
    train = make_model("seq2seq", data_dir, vocab)[1]
    with pytest.raises(ValueError, match="gpmn.idf: table needs data/persona_idf/idf.tsv"):
        build_model("gpmn", params, ModelContext.from_vocab(vocab, None, train))
    table = tmp_path / "idf.tsv"
    table.write_text("pizza\t5.0\n")
    model = build_model("gpmn", params, ModelContext.from_vocab(vocab, None, train, table))
    assert model.idf[vocab.stoi["pizza"]] == 5.0 and model.idf[vocab.stoi["guitar"]] == pytest.approx(0.58829)
    with pytest.raises(InputError, match="cannot read idf table"):
        build_model("gpmn", params, ModelContext.from_vocab(vocab, None, train, tmp_path / "missing.tsv"))


@pytest.mark.parametrize("layers", [1, 2])
def test_unpacked_bidirectional_gru_equals_the_packed_one(layers):
    """layers.bidirectional_gru (padded tensors, the backward direction reversed within each
    row) gives what nn.GRU gives on packed rows: outputs, final states and every gradient;
    rows of different lengths, one empty."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from pipeline.models.layers import bidirectional_gru

    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 5, num_layers=layers, batch_first=True, bidirectional=True).double()
    x = torch.randn(4, 7, 6, dtype=torch.double)
    lengths = torch.tensor([7, 3, 0, 5])
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    out, h = bidirectional_gru(gru, x, mask)
    packed, h_ref = gru(pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False))
    out_ref, _ = pad_packed_sequence(packed, batch_first=True, total_length=7)
    nonempty = (lengths > 0).double()
    out_ref, h_ref = out_ref * nonempty.view(4, 1, 1), h_ref * nonempty.view(1, 4, 1)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(out)  # a loss that reads every position
    grads = torch.autograd.grad((out * weights).sum() + h.sum(), list(gru.parameters()))
    grads_ref = torch.autograd.grad((out_ref * weights).sum() + h_ref.sum(), list(gru.parameters()))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
