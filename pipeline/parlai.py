"""ParlAI's Persona-Chat text format -> one example per bot turn (``schema.PREPARED``).

The format, as ParlAI writes it: every dialogue restarts its line numbers at 1; persona
lines ``N your persona: ...`` / ``N partner's persona: ...`` come first; every other line is
``N <partner utterance>\\t<bot response>``, and the files with candidates add two fields,
an (empty) reward and ``cand1|cand2|...``. ``__SILENCE__`` means the bot speaks first.

The parser is strict: anything else is an ``InputError`` naming file, line and problem,
because a silently mis-parsed line would shift every later turn of its dialogue.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.io import InputError
from pipeline.schema import PREPARED, SILENCE
from pipeline.text import normalize

PERSONA_PREFIXES = {"your persona:": "persona", "partner's persona:": "partner_persona"}
PERSONA_CHOICES = ("self", "other", "both", "none")
VARIANT_CHOICES = ("original", "revised")
_SILENCE_RAW = "__silence__"
_NUMBERED = re.compile(r"([0-9]+) (.*)", re.DOTALL)
# A tab-less line that looks like "<something> persona: ..." is a persona line we do not know.
_PERSONA_LIKE = re.compile(r"([^\t:]{1,40}persona:)")
_BOM = b"\xef\xbb\xbf"


@dataclass
class Turn:
    query: str  # raw partner utterance (``__SILENCE__`` kept as written)
    response: str
    candidates: list[str]
    line: int  # line number in the file, for error messages


@dataclass
class Dialogue:
    line: int  # line of its first line
    persona: list[str] = field(default_factory=list)
    partner_persona: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)


def file_name(split: str, persona: str, variant: str, candidates: bool) -> str:
    """ParlAI's file name for one split of one task variant."""
    return f"{split}_{persona}_{variant}{'' if candidates else '_no_cands'}.txt"


def decode_lines(data: bytes, path: str | os.PathLike) -> list[str]:
    """UTF-8 (optional BOM) -> lines without their ``\\n`` / ``\\r\\n``; non-UTF-8 names its line."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.end]
        raise InputError(path, f"not UTF-8: byte {bad!r} at file offset {e.start}", line) from None
    if not text.strip():
        raise InputError(path, "empty file (no dialogues)")
    # Split on "\n" only: str.splitlines would also break on \x0b, \x1c, \u2028 ... inside text.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    lines = [s[:-1] if s.endswith("\r") else s for s in lines]
    for lineno, s in enumerate(lines, start=1):
        if "\r" in s:  # CR-only line endings would glue a whole file into one "line"
            raise InputError(path, "carriage return inside a line (CR-only line endings?)", lineno)
    return lines


def parse_lines(lines: list[str], path: str | os.PathLike) -> list[Dialogue]:
    """Parse decoded lines (line i of the list is file line i + 1) into dialogues."""
    dialogues: list[Dialogue] = []
    current: Dialogue | None = None
    previous = 0
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():  # tolerate blank lines (e.g. an extra newline at the end)
            continue
        m = _NUMBERED.fullmatch(raw)
        if m is None:
            raise InputError(path, f"expected '<number> <text>', got {_excerpt(raw)}", lineno)
        number, rest = int(m.group(1)), m.group(2)
        if number == 1:
            if current is not None:
                _finish(current, path)
            current = Dialogue(line=lineno)
            dialogues.append(current)
        elif current is None or number != previous + 1:
            expected = "1" if current is None else f"1 or {previous + 1}"
            raise InputError(path, f"broken numbering: line number {number}, expected {expected}", lineno)
        previous = number
        _parse_line(current, rest, lineno, path)
    if current is not None:
        _finish(current, path)
    if not dialogues:
        raise InputError(path, "empty file (no dialogues)")
    return dialogues


def _parse_line(dialogue: Dialogue, rest: str, lineno: int, path) -> None:
    fields = rest.split("\t")
    if len(fields) == 1:
        for prefix, attr in PERSONA_PREFIXES.items():
            if rest.startswith(prefix):
                if dialogue.turns:
                    raise InputError(path, f"persona line after the dialogue's utterances "
                                     f"(dialogue starts at line {dialogue.line})", lineno)
                sentence = rest[len(prefix) :].strip()
                if not sentence:
                    raise InputError(path, f"empty persona sentence after {prefix!r}", lineno)
                getattr(dialogue, attr).append(sentence)
                return
        m = _PERSONA_LIKE.match(rest)
        if m:
            raise InputError(path, f"unknown persona prefix {m.group(1)!r} (expected "
                             "'your persona:' or \"partner's persona:\")", lineno)
        raise InputError(path, "missing tab: expected '<partner utterance>\\t<bot response>', "
                         f"got {_excerpt(rest)}", lineno)
    if len(fields) not in (2, 4):
        raise InputError(path, f"{len(fields)} tab-separated fields, expected 2 (utterance, response) "
                         "or 4 (utterance, response, reward, candidates)", lineno)
    query, response = fields[0].strip(), fields[1].strip()
    if not query:
        raise InputError(path, "empty partner utterance before the tab", lineno)
    if not response:
        raise InputError(path, "empty response after the tab", lineno)
    candidates = [c.strip() for c in fields[3].split("|")] if len(fields) == 4 and fields[3].strip() else []
    dialogue.turns.append(Turn(query, response, candidates, lineno))


def _finish(dialogue: Dialogue, path) -> None:
    if not dialogue.turns:
        raise InputError(path, "dialogue has persona lines but no utterances", dialogue.line)


def _excerpt(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def read_dialogues(path: str | os.PathLike) -> list[Dialogue]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    return parse_lines(decode_lines(path.read_bytes(), path), path)


def is_silence(utterance: str) -> bool:
    return utterance.strip().lower() == _SILENCE_RAW


def examples(dialogues: list[Dialogue], split: str) -> pa.Table:
    """One row per bot turn, PEDNet-normalised (methods §1), in ``schema.PREPARED`` layout.

    ``history`` holds every utterance before the query (both speakers, oldest first), so a
    multi-turn context is ``history + [query]``; ``__SILENCE__`` is the query of an opening
    bot turn and never enters the history.
    """
    cols: dict[str, list] = {name: [] for name in PREPARED.names}
    for d, dialogue in enumerate(dialogues):
        dialogue_id = f"{split}-{d:05d}"
        persona = _persona(dialogue.persona)
        partner_persona = _persona(dialogue.partner_persona)
        history: list[str] = []
        for t, turn in enumerate(dialogue.turns):
            silent = is_silence(turn.query)
            query = SILENCE if silent else normalize(turn.query)
            response = normalize(turn.response)
            cols["example_id"].append(f"{dialogue_id}-{t:02d}")
            cols["dialogue_id"].append(dialogue_id)
            cols["turn"].append(t)
            cols["persona"].append(persona)
            cols["partner_persona"].append(partner_persona)
            cols["history"].append(list(history))
            cols["query"].append(query)
            cols["response"].append(response)
            cols["candidates"].append([normalize(c) for c in turn.candidates])
            if not silent:
                history.append(query)
            history.append(response)
    return pa.Table.from_pydict(cols, schema=PREPARED)


def _persona(sentences: list[str]) -> list[str]:
    # A sentence that is only a period normalises to nothing: it carries no persona.
    return [s for s in (normalize(x, persona=True) for x in sentences) if s]


def short_response_mask(table: pa.Table, min_tokens: int) -> list[bool]:
    """True for rows whose normalised response has fewer than ``min_tokens`` tokens."""
    return [len(r.split()) < min_tokens for r in table.column("response").to_pylist()]
