"""Talk to a trained generator in the terminal.

    python -m pipeline.chat --model pednet --persona "i have two dogs." --persona "i am a nurse."

``--model`` is a checkpoint file, a run directory or a run name (``pednet`` ->
``checkpoints/pednet/seed1/best.pt``); every generator loads (seq2seq, gpmn, postks, pednet and
the ``*_gcl`` runs, which are the same model classes), through ``pipeline.train.load_trained``.
Without ``--persona`` / ``--persona-file`` a model that reads a persona asks for one.

It runs from any directory: run names, ``data/`` and ``params.yaml`` are the project's
(``find_project``: the first directory from the current one upwards with a ``dvc.yaml`` or a
``checkpoints/``, else the checkout this module belongs to), and a checkpoint path that does
not exist from the current directory is tried from the project's. A run name that is not
trained names the directory it looked in, and the runs trained there.

Each line typed is the partner utterance X; the reply comes from the shared decoder
(``pipeline.decode``: greedy, or beam search with ``--beam N``). Typed text is brought to
the training data's form: punctuation split off as in Persona-Chat's files, then
``pipeline.preprocessing.text.normalize`` (persona sentences with ``persona=True``). A model that selects
a persona sentence (PEDNet's CDNet, PostKS's prior) shows its choice every turn.

PEDNet's CDNet query needs the specific words of X: PMI statistics are fit on
``data/prepared/train.parquet`` with the ``pmi`` params (a second or two on the shared
slice) and X is scored the way the ``pmi`` stage scores a valid/test example (from every
training example, nothing left out).

The generators are single-turn (X = the partner's last utterance, methods §1), so the
conversation history is kept for ``/history`` and ``/reset`` only and never reaches the model.

Commands: ``/persona``, ``/history``, ``/reset``, ``/help``, ``/quit`` (or end of input).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from pipeline.dataset import (
    BILINEAR_PRIOR,
    CONGENERIC,
    PERSONA,
    PERSONA_PRIOR,
    PRIORS,
    SPECIFIC_WORDS,
    Example,
    Vocab,
    collate,
)
from pipeline.decode import decode
from pipeline.io import InputError, load_params, read_parquet, run_stage
from pipeline.models import Generator
from pipeline.preprocessing import pmi
from pipeline.preprocessing.text import gcl_context, normalize
from pipeline.train import load_trained

log = logging.getLogger(__name__)

CHECKPOINTS = Path("checkpoints")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the checkout this module belongs to
# The `pmi` stage's params, for a checkout without params.yaml.
PMI_DEFAULTS = {"threshold": 3.5, "max_words": 5, "min_count": 3}
PERSONA_PREFIX = "your persona:"
HELP = "commands: /persona shows the persona, /history the conversation, /reset clears it, /quit exits"

# Persona-Chat's files are tokenised: words (with their apostrophes) and punctuation
# marks separated by spaces ("do you have pets ?", "i'm tired .").
_TOKENS = re.compile(r"[\w']+|[^\w\s]")


def tokenize(text: str) -> str:
    return " ".join(_TOKENS.findall(text))


def normalize_utterance(text: str) -> str:
    return normalize(tokenize(text))


def normalize_persona(text: str) -> str:
    text = text.strip()
    if text.lower().startswith(PERSONA_PREFIX):  # lines copied from a ParlAI file
        text = text[len(PERSONA_PREFIX):]
    return normalize(tokenize(text), persona=True)


def find_project(start: Path | None = None) -> Path:
    """The project chat reads: the first directory from ``start`` (the current directory)
    upwards holding ``dvc.yaml`` or ``checkpoints/``; else the checkout this module belongs to
    (when it has ``dvc.yaml``: run from anywhere, ``python -m pipeline.chat`` finds its own);
    else ``start``."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "dvc.yaml").is_file() or (d / "checkpoints").is_dir():
            return d
    return PACKAGE_ROOT if (PACKAGE_ROOT / "dvc.yaml").is_file() else start


def project_path(project: Path, name: str) -> Path:
    """``project/name``, relative when the project is the current directory (shorter messages)."""
    return Path(name) if project == Path.cwd().resolve() else project / name


def resolve_checkpoint(model: str, checkpoints: Path = CHECKPOINTS, seed: int = 1,
                       project: Path | None = None) -> Path:
    """A checkpoint file, a run directory (its best.pt) or a run name
    (checkpoints/<name>/seed<seed>/best.pt). A relative path missing from the current
    directory is read from ``project`` when it is there."""
    path = Path(model)
    if project is not None and not path.is_absolute() and not path.exists() and (project / path).exists():
        path = project / path
    if path.is_dir() and not (path / "best.pt").exists() and (path / f"seed{seed}" / "best.pt").exists():
        path = path / f"seed{seed}"  # a run directory: its seed's checkpoint
    if path.is_dir():
        if not (path / "best.pt").exists():
            raise InputError(path, "directory without a best.pt (not a trained run)")
        return path / "best.pt"
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    run = checkpoints / model / f"seed{seed}" / "best.pt"
    if not run.exists():
        where = checkpoints.resolve()
        how = train_hint(project or checkpoints.resolve().parent, model, seed)
        if not checkpoints.is_dir():
            raise InputError(run, f"no trained model {model!r}: looked in {where}, which does not exist "
                                  f"({how}, or give --model a checkpoint file)")
        known = sorted(f"{p.parent.parent.name} ({p.parent.name})" for p in checkpoints.glob("*/seed*/best.pt"))
        raise InputError(run, f"no trained model {model!r} in {where} (trained: {', '.join(known) or 'none'}; "
                              f"{how})")
    return run


def train_hint(project: Path, run: str, seed: int) -> str:
    """How to train just this run: the DVC stage instance whose output is
    ``checkpoints/<run>/seed<seed>`` (``dvc repro train@pednet-1`` runs it and only what it
    needs), with its time as measured here (reports/stage_times.json, else projected in
    reports/benchmarks.json). ``run `dvc repro``` when no stage trains it."""
    stage, upstream = training_stage(project, run, seed)
    if stage is None and (project / "dvc.yaml").is_file():
        return f"no stage of {project / 'dvc.yaml'} trains {run!r} seed {seed}"
    if stage is None:
        return "run `dvc repro` in the project"
    took = _stage_minutes(project, stage, run, upstream)
    return f"train it with `dvc repro {stage}`{took}"


def training_stage(project: Path, run: str, seed: int) -> tuple[str | None, list[str]]:
    """DVC's stage instance whose outputs hold ``checkpoints/<run>/seed<seed>``, and the
    stages upstream of it; (None, []) without a readable dvc.yaml or such a stage."""
    if not (project / "dvc.yaml").is_file():
        return None, []
    import networkx as nx
    from dvc.repo import Repo

    target = f"checkpoints/{run}/seed{seed}"
    try:
        with Repo(str(project)) as repo:
            graph = repo.index.graph  # an edge from each stage to the stages it depends on
            for stage in graph.nodes:
                if any(str(out.def_path) == target for out in stage.outs):
                    return stage.name, sorted(s.name for s in nx.descendants(graph, stage))
    except Exception as e:  # a broken dvc.yaml: the hint is a courtesy, the error is the missing model
        log.debug("cannot read %s: %s", project / "dvc.yaml", e)
    return None, []


def _stage_minutes(project: Path, stage: str, run: str, upstream: list[str]) -> str:
    """`` (about N min on <CPU>, measured; plus M min for the stages it needs, if not yet run)``,
    from reports/stage_times.json (any seed of the same stage), else the projection of
    reports/benchmarks.json for an MLE run; empty when neither knows the stage."""
    import json

    def read(name: str) -> dict:
        try:
            return json.loads((project / "reports" / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    times = read("stage_times.json").get("stages", {})
    same = [r for name, r in times.items() if name.rsplit("-", 1)[0] == stage.rsplit("-", 1)[0]]
    if same:
        own, cpu, how = same[0]["wall_seconds"] / 60, same[0].get("cpu", "this CPU"), "measured"
    else:
        bench = read("benchmarks.json")
        projected = bench.get("details", {}).get("projection", {}).get("mle_runs", {}).get(run)
        if not projected:
            return ""
        own = projected["minutes"] / max(len(projected.get("committed_steps", [])), 1)
        cpu, how = bench.get("measured_on", {}).get("projection", "this CPU").split(",")[0], "projected"
    before = sum(times[s]["wall_seconds"] for s in upstream if s in times) / 60
    need = f"; plus about {before:.0f} min for the stages it needs, if not yet run" if before >= 1 else ""
    return f" (about {own:.0f} min on {cpu}, {how}{need})"


@dataclass
class SpecificWords:
    """PEDNet's specific words of a query: PMI with the persona from training statistics."""

    stats: pmi.PMIStats
    threshold: float
    max_words: int
    min_count: int

    @classmethod
    def fit(cls, train_path: Path, params: dict) -> SpecificWords:
        train = read_parquet(train_path, columns=["query", "persona"]).to_pydict()
        return cls(pmi.fit(train["query"], train["persona"]), float(params["threshold"]),
                   int(params["max_words"]), int(params["min_count"]))

    def __call__(self, query: str, persona: list[str]) -> list[str]:
        words, _ = pmi.specific_words(self.stats, [query], [persona], self.threshold, self.max_words,
                                      self.min_count)
        return words[0]


@dataclass
class Reply:
    text: str
    selected: int | None  # index into the persona; -1 = the model chose none; None = it never selects
    specific_words: list[str]
    unknown: list[str]  # typed words outside the vocabulary (read as <unk>)


@dataclass
class Chat:
    """One conversation with a loaded generator."""

    model: Generator
    vocab: Vocab
    persona: list[str] = field(default_factory=list)  # normalised sentences
    specific: Callable[[str, list[str]], list[str]] | None = None  # (X, persona) -> specific words
    method: str = "greedy"
    beam_size: int = 5
    max_len: int = 30
    length_penalty: float = 0.0
    history: list[tuple[str, str]] = field(default_factory=list)  # (partner, bot); history-context models read it
    prior: Callable[[str, list[str]], np.ndarray] | None = None  # (X, persona) -> cos(X, p_i), PEDNet's prior

    def __post_init__(self):
        self.config = type(self.model).data_config(self.model.params)
        self.device = next(self.model.parameters()).device

    @property
    def reads_persona(self) -> bool:
        return PERSONA in self.model.inputs

    @property
    def reads_specific_words(self) -> bool:
        return SPECIFIC_WORDS in self.model.inputs

    @property
    def persona_read(self) -> list[str]:
        """The sentences the model sees (it was trained with at most max_persona_sentences)."""
        return self.persona[: self.config.max_persona_sentences]

    def example(self, query: str, specific: list[str]) -> Example:
        """One example encoded as ``pipeline.dataset.load_split`` encodes a test turn."""
        cfg, enc = self.config, self.vocab.encode

        def keep_last(ids: np.ndarray) -> np.ndarray:
            return ids[-cfg.max_context_tokens:] if cfg.max_context_tokens else ids

        utterance = query
        if cfg.context == "history":  # the conversation so far, as load_split builds it
            earlier = [u for turn in self.history for u in turn]
            query = " ".join(gcl_context(earlier, query, cfg.max_context_tokens)) or query
        ex = Example("chat", query=keep_last(enc(query)), response=np.asarray([self.vocab.eos]))
        if self.reads_persona:
            ex.persona = [enc(p, cfg.max_persona_tokens) for p in self.persona_read]
        if self.model.inputs & PRIORS.keys():
            if self.prior is None:
                raise ValueError(f"{self.model.name} reads a selection prior (pednet.selection_prior): give Chat a prior")
            ex.persona_prior = self.prior(utterance, self.persona_read)
        if self.reads_specific_words:
            ex.specific_words = enc(" ".join(specific))
        if CONGENERIC in self.model.inputs:  # PDNet's input, a training-time network: own X~ only
            ex.congeneric = [keep_last(enc(pmi.mask_query(query, specific)))]
        return ex

    @torch.no_grad()
    def reply(self, utterance: str) -> Reply:
        """The model's response to the partner utterance (already normalised)."""
        if self.reads_persona and not self.persona:
            raise ValueError(f"{self.model.name} needs at least one persona sentence")
        # scored with every persona sentence, as the pmi stage does
        specific = self.specific(utterance, self.persona) if self.specific and self.reads_specific_words else []
        batch = collate([self.example(utterance, specific)], [0], self.vocab.pad, self.model.inputs)
        out = decode(self.model, batch.to(self.device), self.method, self.beam_size, self.max_len,
                     self.length_penalty)
        selected = None
        if out.selected_persona is not None:
            s = int(out.selected_persona[0])
            selected = s if 0 <= s < len(self.persona_read) else -1
        text = self.vocab.decode(out.tokens[0])
        self.history.append((utterance, text))
        unknown = [w for w in dict.fromkeys(utterance.split()) if w not in self.vocab.stoi]
        return Reply(text, selected, specific, unknown)

    def reset(self) -> None:
        self.history.clear()


# -- terminal ----------------------------------------------------------------------------
class Terminal:
    """Prompted input; without a terminal (a pipe), each line read is echoed after its
    prompt so the transcript reads the same."""

    def __init__(self, inp: TextIO = sys.stdin, out: TextIO = sys.stdout):
        self.inp, self.out = inp, out
        self.tty = inp.isatty()
        if self.tty:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass

    def ask(self, prompt: str) -> str:
        """A line without its newline; EOFError at the end of input."""
        if self.tty:
            return input(prompt)
        line = self.inp.readline()
        if not line:
            raise EOFError
        self.say(prompt + line.rstrip("\n"))
        return line.rstrip("\n")

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


def ask_persona(term: Terminal) -> list[str]:
    term.say("Persona sentences, one per line (e.g. 'i have two dogs.'); an empty line ends:")
    sentences: list[str] = []
    while True:
        try:
            line = term.ask(f"persona {len(sentences) + 1}> ")
        except EOFError:
            break
        if not line.strip():
            if sentences:
                break
            term.say("  (at least one sentence)")
            continue
        if s := normalize_persona(line):
            sentences.append(s)
    return sentences


def read_persona_file(path: Path) -> list[str]:
    """One sentence per line; blank lines and # comments skipped; a ParlAI 'your persona:' prefix dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read persona file ({e.__class__.__name__})") from None
    out = [normalize_persona(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not (out := [s for s in out if s]):
        raise InputError(path, "no persona sentences")
    return out


def show_persona(term: Terminal, chat: Chat) -> None:
    if not chat.persona:
        term.say("  (no persona)")
    for i, s in enumerate(chat.persona, 1):
        extra = "" if i <= len(chat.persona_read) else "  (not read: the model reads "\
            f"{len(chat.persona_read)} sentences)"
        term.say(f"  {i}. {s}{extra}")


def show_reply(term: Terminal, chat: Chat, r: Reply) -> None:
    term.say(f"bot> {r.text or '(empty response)'}")
    notes = []
    if r.selected is not None:
        notes.append(f"persona {r.selected + 1}: {chat.persona_read[r.selected]}" if r.selected >= 0
                     else "persona: none selected")
    if chat.reads_specific_words:
        notes.append(f"specific words: {', '.join(r.specific_words) or 'none'}")
    if r.unknown:
        notes.append(f"not in the vocabulary: {', '.join(r.unknown)}")
    for note in notes:
        term.say(f"     [{note}]")


def converse(chat: Chat, term: Terminal) -> int:
    """The read-reply loop; returns the number of replies."""
    replies = 0
    while True:
        try:
            line = term.ask("you> ")
        except (EOFError, KeyboardInterrupt):
            term.say()
            return replies
        command = line.strip().lower()
        if command in ("/quit", "/exit", "/q"):
            return replies
        if command == "/persona":
            show_persona(term, chat)
        elif command == "/reset":
            chat.reset()
            term.say("  (history cleared)")
        elif command == "/history":
            for x, y in chat.history:
                term.say(f"  you: {x}\n  bot: {y}")
            if not chat.history:
                term.say("  (no history)")
        elif command in ("/help", "/?"):
            term.say(HELP)
        elif command.startswith("/"):
            term.say(f"  unknown command {command.split()[0]}; {HELP}")
        elif utterance := normalize_utterance(line):
            show_reply(term, chat, chat.reply(utterance))
            replies += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.chat", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="checkpoint file, run directory, or run name (pednet -> checkpoints/pednet/seed1/best.pt)")
    parser.add_argument("--seed", type=int, default=1, help="which training seed of a run name (default 1)")
    parser.add_argument("--persona", action="append", default=[], metavar="SENTENCE",
                        help="a persona sentence (repeat for more)")
    parser.add_argument("--persona-file", type=Path, help="persona sentences, one per line")
    parser.add_argument("--beam", type=int, default=1, metavar="N", help="beam size (1 = greedy, the default)")
    parser.add_argument("--max-len", type=int, default=30, help="response tokens at most")
    parser.add_argument("--length-penalty", type=float, default=0.0, help="beam: rank by score / length^alpha")
    parser.add_argument("--data", type=Path,
                        help="data directory the model was trained on (prepared/vocab.parquet, prepared/train.parquet; "
                             "default: the project's data/)")
    parser.add_argument("--params", type=Path, help="for the `pmi` section (default: the project's params.yaml)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--verbose", action="store_true", help="log what is loaded")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.beam < 1 or args.max_len < 1:
        parser.error("--beam and --max-len must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but CUDA is not available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")

    project = find_project()
    args.data = args.data or project_path(project, "data")
    args.params = args.params or project_path(project, "params.yaml")
    checkpoint = resolve_checkpoint(args.model, project_path(project, "checkpoints"), args.seed, project)
    vocab_path = args.data / "prepared" / "vocab.parquet"
    if not vocab_path.exists():
        raise InputError(vocab_path, "missing: the vocabulary the model was trained with (run the prepare "
                                     "stage, or point --data at the model's data directory)")
    vocab = Vocab.load(vocab_path)
    model = load_trained(checkpoint, vocab, device)

    term = Terminal()
    persona = [s for s in (normalize_persona(p) for p in args.persona) if s]
    if args.persona_file is not None:
        persona += read_persona_file(args.persona_file)

    specific = None
    if SPECIFIC_WORDS in model.inputs:
        train_path = args.data / "prepared" / "train.parquet"
        if train_path.exists():
            params = {**PMI_DEFAULTS, **(load_params("pmi", args.params) if args.params.exists() else {})}
            started = time.perf_counter()
            specific = SpecificWords.fit(train_path, params)
            log.info("PMI statistics from %d training examples (%.1fs)", specific.stats.num_examples,
                     time.perf_counter() - started)
        else:
            term.say(f"note: {train_path} is missing, so no specific words (the CDNet query is u(X) alone)")

    prior = None
    if model.inputs & PRIORS.keys():  # the persona_labels encoder, as the stages computed the prior
        from pipeline.preprocessing import persona_labels as pl
        from pipeline.preprocessing import persona_prior as pp

        if BILINEAR_PRIOR in model.inputs:  # before the encoder loads: a missing file fails fast
            path = args.data / "persona_prior" / "selector.npz"
            if not path.exists():
                raise InputError(path, f"file not found: {model.name} reads the bilinear prior, written by "
                                       "`python -m stages.persona_prior`")
            w, scale = pp.load_selector(path)
        lp = load_params("persona_labels", args.params)
        enc = pl.load_encoder(lp["encoder"], lp["layer"], lp["max_length"], device=str(device),
                              precision=lp.get("precision", "float32"))
        if PERSONA_PRIOR in model.inputs:
            prior = lambda query, persona: pl.query_cosines(enc, query, persona)  # noqa: E731
        else:
            prior = lambda query, persona: pp.query_logits(enc, w, scale, query, persona)  # noqa: E731

    chat = Chat(model, vocab, persona, specific, "beam" if args.beam > 1 else "greedy", args.beam,
                args.max_len, args.length_penalty, prior=prior)
    decoding = f"beam {args.beam}" if args.beam > 1 else "greedy"
    term.say(f"{model.name} from {checkpoint} on {device}, {decoding} decoding. {HELP}.")
    if chat.reads_persona:
        if not chat.persona:
            chat.persona = ask_persona(term)
            if not chat.persona:
                raise InputError("stdin", f"{model.name} needs at least one persona sentence")
        if len(chat.persona) > len(chat.persona_read):
            term.say(f"note: {model.name} reads the first {len(chat.persona_read)} persona sentences")
        term.say("persona:")
        show_persona(term, chat)
    elif chat.persona:
        term.say(f"note: {model.name} reads no persona; the sentences given are ignored")
    try:
        converse(chat, term)
    except KeyboardInterrupt:  # Ctrl-C while a reply is decoded
        term.say()
    return 0


if __name__ == "__main__":
    run_stage(main)
