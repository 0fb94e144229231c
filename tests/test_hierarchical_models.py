"""The GCL paper's other generators (HRED, HRAN, Transformer) on tiny multi-turn inputs:
the utterance split on <eot>, forward/backward, overfitting, GCL's sequence_log_prob,
greedy and beam decoding, bf16 autocast and a checkpoint round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipeline import schema
from pipeline.dataset import Vocab
from pipeline.decode import beam_search, generate_rows, greedy
from pipeline.io import InputError
from pipeline.models import model_params
from pipeline.models.hierarchy import EOT_ID, split_utterances
from pipeline.models.transformer import sinusoid
from pipeline.train import autocast, load_checkpoint, load_trained, save_checkpoint
from tests.generator_checks import check_forward_backward, check_overfits, check_sequence_log_prob
from tests.model_inputs import build_tiny, tiny_params, write_model_inputs

torch.set_num_threads(1)
MODELS = ["hred", "hran", "transformer"]
TINY = {"transformer": {"heads": 2, "ff_dim": 32, "layers": 2, "norm_first": True}, "hred": {}, "hran": {}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_model_inputs(tmp_path_factory.mktemp("hier"))


@pytest.fixture(scope="module")
def vocab(data_dir):
    return Vocab.load(data_dir / "prepared" / "vocab.parquet")


def make_model(name, data_dir, vocab, seed=0, **overrides):
    """A tiny ``name`` reading the multi-turn history; ``overrides`` go to its own section
    (which overrides the backbone's keys, as in params.yaml)."""
    params = tiny_params(model={"context": "history", "max_context_tokens": 60}, **{name: {**TINY[name], **overrides}})
    return build_tiny(name, model_params(params, name), data_dir, vocab, seed=seed)


def multi_turn_rows(ds, n=6):
    """Rows whose context has at least two turns, and one without any <eot>."""
    rows = [i for i, ex in enumerate(ds.examples) if (ex.query == EOT_ID).sum() >= 2][: n - 1]
    single = next(i for i, ex in enumerate(ds.examples) if (ex.query == EOT_ID).sum() == 0)
    return [*rows, single]


# -- the utterance split ---------------------------------------------------------------------
def _split(rows, pad=0):
    n = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    return split_utterances(ids, ids != pad, EOT_ID, pad)


def _utterances(ids, mask, exists):
    return [[ids[b, u][mask[b, u]].tolist() for u in range(ids.shape[1]) if exists[b, u]] for b in range(ids.shape[0])]


def test_eot_id_is_the_vocabularys(vocab):
    assert vocab.stoi[schema.EOT] == EOT_ID


def test_split_utterances_edge_cases():
    e = EOT_ID
    ids, mask, exists = _split([
        [10, 11, e, 12, e, 13, 14, 15],  # three utterances
        [10, 11, 12],  # no <eot>: one utterance
        [e, 10, e, e, 11, e],  # leading, repeated and trailing <eot>: empty utterances dropped
        [e, e],  # only separators: nothing
        [0],  # all padding: nothing
    ])
    assert ids.shape == (5, 3, 3) and mask.shape == ids.shape and exists.shape == (5, 3)
    assert _utterances(ids, mask, exists) == [[[10, 11], [12], [13, 14, 15]], [[10, 11, 12]], [[10], [11]], [], []]
    assert exists.tolist() == [[True] * 3, [True, False, False], [True, True, False], [False] * 3, [False] * 3]
    assert not (ids == e).any() and (ids[~mask] == 0).all()  # <eot> dropped, padding elsewhere


def test_split_utterances_all_padding_batch_has_one_empty_slot():
    ids, mask, exists = _split([[0, 0], [0, 0]])
    assert ids.shape == (2, 1, 1) and not mask.any() and not exists.any()


def test_split_utterances_round_trips_the_dataset(data_dir, vocab):
    _, ds = make_model("hred", data_dir, vocab)
    batch = ds.collate(range(len(ds)))
    ids, mask, exists = split_utterances(batch.query, batch.query_mask)
    for b, utts in enumerate(_utterances(ids, mask, exists)):
        text = ds.texts["query"][b]
        expected = [u.split() for u in text.split(schema.EOT)]
        assert [vocab.decode(u).split() for u in utts] == [u for u in expected if u]


# -- the models --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backbone", [{}, {"layers": 2, "tie_embeddings": False}])
def test_forward_backward(name, backbone, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab, **backbone)
    check_forward_backward(model, train.collate(multi_turn_rows(train)), tied=not backbone)


@pytest.mark.parametrize("name", MODELS)
def test_the_context_matters_and_an_empty_one_is_finite(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab)
    model.eval()
    batch = train.collate(multi_turn_rows(train, 3))
    with torch.no_grad():
        own = model.sequence_log_prob(batch)
        empty = batch.query.clone().fill_(vocab.pad)
        blank = model.sequence_log_prob(dataclasses.replace(batch, query=empty, query_mask=empty != vocab.pad))
    assert torch.isfinite(blank).all() and not torch.allclose(own, blank)


@pytest.mark.parametrize("name", MODELS)
def test_sequence_log_prob_matches_nll_and_stepwise_decoding(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab)
    model.eval()
    check_sequence_log_prob(model, train.collate(multi_turn_rows(train, 4)), vocab.bos)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_tiny_set(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab, dropout=0.0, hidden=32)
    check_overfits(model, train.collate(range(8)))


@pytest.mark.parametrize("name", MODELS)
def test_greedy_and_beam_decoding(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab)
    model.eval()
    batch = train.collate(multi_turn_rows(train, 5))
    g = greedy(model, batch, max_len=7)
    b1 = beam_search(model, batch, beam_size=1, max_len=7)
    b3 = beam_search(model, batch, beam_size=3, max_len=7)
    assert g.tokens.shape[0] == b3.tokens.shape[0] == 5 and g.tokens.shape[1] <= 7 and b3.tokens.shape[1] <= 7
    assert g.selected_persona is None
    torch.testing.assert_close(b1.scores, g.scores)  # beam 1 is greedy
    assert torch.equal(b1.tokens, g.tokens)
    assert (b3.scores >= g.scores - 1e-4).all()  # a wider beam never scores below greedy (no length penalty)
    rows = generate_rows(model, train, method="beam", beam_size=2, max_len=5, batch_size=7)
    assert len(rows) == len(train) and all(r["selected_persona"] is None for r in rows)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast(name, data_dir, vocab):
    model, train = make_model(name, data_dir, vocab)
    batch = train.collate(multi_turn_rows(train))
    with autocast(torch.device("cpu"), "bf16"):
        out = model(batch)
        out["loss"].backward()
        model.eval()
        decoded = greedy(model, batch, max_len=5)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert decoded.tokens.shape[0] == batch.size and torch.isfinite(decoded.scores).all()


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(name, data_dir, vocab, tmp_path):
    model, train = make_model(name, data_dir, vocab, seed=3)
    model.eval()
    path = tmp_path / "best.pt"
    save_checkpoint({"model_name": name, "model_params": model.params, "model": model.state_dict()}, path)
    assert load_checkpoint(path)["model_params"] == model.params
    again = load_trained(path, vocab)
    batch = train.collate(multi_turn_rows(train, 4))
    with torch.no_grad():
        torch.testing.assert_close(again.sequence_log_prob(batch), model.sequence_log_prob(batch))
    assert torch.equal(greedy(again, batch, 6).tokens, greedy(model, batch, 6).tokens)


def test_transformer_sizes_come_from_params(data_dir, vocab):
    model, _ = make_model("transformer", data_dir, vocab, layers=3, hidden=24, heads=3, ff_dim=40)
    assert len(model.encoder_blocks) == len(model.decoder_blocks) == 3
    assert model.decoder_blocks[0].ff.inner.weight.shape == (40, 24)
    assert model.encoder_blocks[0].self_attn.heads == 3
    post, _ = make_model("transformer", data_dir, vocab, norm_first=False)
    assert isinstance(post.encoder_norm, torch.nn.Identity)
    with pytest.raises(ValueError, match="multiple of heads"):
        make_model("transformer", data_dir, vocab, hidden=16, heads=3)


def test_transformer_dropout_sites(data_dir, vocab):
    """One `dropout` everywhere unless a site is set (the GCL authors' 0.2 / 0.1 / 0.1 / none)."""
    def rates(model):
        block = model.decoder_blocks[0]
        return (model.embeddings.dropout.p, block.dropout.p, block.self_attn.dropout.p, block.cross_attn.dropout.p,
                block.ff.dropout.p, model.readout.dropout.p)

    plain, _ = make_model("transformer", data_dir, vocab, dropout=0.3)
    assert rates(plain) == (0.3,) * 6
    split, _ = make_model("transformer", data_dir, vocab, dropout=0.2, attention_dropout=0.1, ff_dropout=0.1,
                          readout_dropout=0.0)
    assert rates(split) == (0.2, 0.2, 0.1, 0.1, 0.1, 0.0)


def test_transformer_context_positions_from_the_end(data_dir, vocab, monkeypatch):
    """from_end: each example's last context token is position 0, whatever the padding, so
    an example scores the same alone and in a padded batch; decoding still matches teacher
    forcing. from_start: 0 is the first token."""
    model, train = make_model("transformer", data_dir, vocab, context_positions="from_end", dropout=0.0)
    model.eval()
    rows = multi_turn_rows(train, 4)
    batch = train.collate(rows)
    seen = []
    real = type(model).embed
    monkeypatch.setattr(type(model), "embed", lambda self, e, p: seen.append(p) or real(self, e, p))
    with torch.no_grad():
        together = model.sequence_log_prob(batch)
        alone = torch.cat([model.sequence_log_prob(train.collate([r])) for r in rows])
    lengths = batch.query_mask.sum(1)
    assert lengths.min() < lengths.max()  # the batch pads some examples
    expected = (lengths.unsqueeze(1) - 1 - torch.arange(batch.query.shape[1])).clamp(min=0)
    assert torch.equal(seen[0], expected)
    assert torch.allclose(together, alone, atol=1e-4)
    monkeypatch.undo()
    check_sequence_log_prob(model, batch, vocab.bos)
    start, _ = make_model("transformer", data_dir, vocab)
    seen.clear()
    monkeypatch.setattr(type(start), "embed", lambda self, e, p: seen.append(p) or real(self, e, p))
    with torch.no_grad():
        start.encode(batch)
    assert torch.equal(seen[0], torch.arange(batch.query.shape[1]))


def test_transformer_words_are_not_drowned_by_the_positions(data_dir, vocab):
    """Vaswani et al.'s sqrt(d) scaling: unit-norm projected word vectors would be a tenth of
    the sinusoids' norm, and the model ignored its context. The words must weigh as much."""
    model, _ = make_model("transformer", data_dir, vocab, hidden=64, heads=2)
    model.eval()
    ids = torch.arange(1, 9).unsqueeze(0)
    emb = model.embeddings(ids)
    emb = emb / emb.norm(dim=-1, keepdim=True)  # pretrained-like rows of norm 1
    with torch.no_grad():
        positions = torch.arange(8)
        words = model.embed(emb, positions) - model.embed(torch.zeros_like(emb), positions)
        pos = sinusoid(positions, 64)
    ratio = (words.norm(dim=-1) / pos.norm(dim=-1)).mean().item()
    assert ratio > 0.3, ratio


# -- the stages, as dvc.yaml runs them ------------------------------------------------------------
def test_stages_train_score_fine_tune_and_decode_each_generator(tmp_path, data_dir, monkeypatch):
    """train_history_models@<m>, reference_scores@, train_gcl@ and generate@ of the three runs:
    the one training loop, GCL's objective and the decoder, each unchanged (groups selected by
    BM25 from fabricated pools, not by MSN, to stay quick)."""
    import shutil

    import pyarrow.parquet as pq
    import yaml

    from stages import gcl_separation, generate, reference_scores, select_groups, train, train_gcl
    from tests.test_gcl import fake_groups

    shutil.copytree(data_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_NO_PROGRESS", "1")
    for split in ("train", "valid"):
        (tmp_path / "data/msn_scores").mkdir(exist_ok=True)
        pq.write_table(fake_groups(pq.read_table(f"data/prepared/{split}.parquet")), f"data/msn_scores/{split}.parquet")
    runs = {f"{m}_history": {"model": m, "context": "history", "max_context_tokens": 30} for m in MODELS}
    gcl_runs = {f"{r}_gcl": {"train": {"max_steps": 2, "batch_size": 8, "validate_every": 0, "criterion": "cl_nll"}}
                for r in runs}
    gcl_runs["hred_history_gcl_x"] = {"gcl": {"k": 1}}  # a variant never trained
    gcl_runs["hred_history_gcl_k3"] = {"gcl": {"k": 3}, "train": {"max_steps": 1}}
    params = tiny_params(train={"epochs": 1}, select_groups={"selection": "bm25", "seed": 1},
                         reference_scores={"batch_size": 64}, gcl={"k": 2}, **TINY, **runs, **gcl_runs)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    select_groups.main()
    for run, section in runs.items():
        train.main([run, "--seed", "1"])
        reference = load_checkpoint(f"checkpoints/{run}/seed1/best.pt")
        assert reference["model_name"] == section["model"] and reference["model_params"]["context"] == "history"
        reference_scores.main([run, "--seed", "1"])
        summary = train_gcl.main([run, "--seed", "1"])
        assert summary["steps"] == 2 and summary["criterion"] == "cl_nll"
        if run == "hred_history":  # the diagnostic of what the fine-tune did to D, best and last step
            sep = gcl_separation.main([run, "--seed", "1"])
            written = json.loads(Path(f"reports/probes/gcl_separation/{run}_gcl/seed1.json").read_text())
            assert written == json.loads(json.dumps(sep)) and sep["last"]["step"] == 2
            best = sep["best"]  # its valid CL is the one the selection read (criterion = CL + 0.5 NLL)
            assert best["cl"] == pytest.approx(summary["best_val_criterion"] - 0.5 * summary["best_val_nll"], abs=1e-3)
            assert 0.0 <= sep["last"]["auc"] <= 1.0 and sep["last"]["positive_original"]["pairs"] > 0
            with pytest.raises(InputError, match=f"checkpoints/{run}_gcl_x/seed1/best.pt: missing"):
                gcl_separation.main([run, "--seed", "1", "--run", f"{run}_gcl_x"])
        target = load_checkpoint(f"checkpoints/{run}_gcl/seed1/last.pt")
        assert target["model_name"] == section["model"] and target["model_params"] == reference["model_params"]
        assert any(not torch.equal(target["model"][k], v) for k, v in reference["model"].items())
        if run == "hred_history":  # GCL Figure 3's k above the DAG's (gcl.k = 2 here): its own selection, by hand
            with pytest.raises(InputError, match="scored_groups_k3/train.parquet: missing .*select_groups --k 3"):
                train_gcl.main([run, "--seed", "1", "--run", f"{run}_gcl_k3"])
            assert select_groups.main(["--k", "3"])["k"] == 3 and Path("reports/scored_groups_k3.json").exists()
            wide, narrow = (pq.read_table(f"data/{d}/train.parquet") for d in ("scored_groups_k3", "scored_groups"))
            assert max(map(len, wide.column("negative_scores").to_pylist())) > \
                max(map(len, narrow.column("negative_scores").to_pylist()))
            reference_scores.main([run, "--seed", "1", "--k", "3"])
            assert pq.read_table(f"data/reference_scores_k3/{run}/seed1/train.parquet").num_rows == wide.num_rows
            assert train_gcl.main([run, "--seed", "1", "--run", f"{run}_gcl_k3"])["steps"] == 1
            with pytest.raises(InputError, match="--k: 2: the DAG's groups"):
                select_groups.main(["--k", "2"])
        for name in (run, f"{run}_gcl"):
            generate.main([name, "--seed", "1"])
            rows = pq.read_table(f"reports/generations/{name}/seed1.parquet").to_pylist()
            assert len(rows) == pq.read_table("data/prepared/test.parquet").num_rows
            assert all(isinstance(r["hypothesis"], str) and r["selected_persona"] is None for r in rows)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_chat_reads_the_growing_history(name, method, data_dir, vocab):
    from pipeline.chat import Chat

    model, _ = make_model(name, data_dir, vocab)
    model.eval()
    chat = Chat(model, vocab, method=method, beam_size=3, max_len=6)
    for utterance in ("hi how are you today ?", "do you have pets ?", "i like to read ."):
        reply = chat.reply(utterance)
        assert isinstance(reply.text, str) and reply.selected is None
    context = chat.example("what do you do ?", []).query
    turns = [u for turn in chat.history for u in turn if u] + ["what do you do ?"]  # an empty reply is no turn
    assert (context == EOT_ID).sum() == len(turns) - 1 >= 3
