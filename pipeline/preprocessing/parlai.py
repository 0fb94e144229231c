"""ParlAI's Persona-Chat text format -> one example per bot turn (``schema.PREPARED``).

The format, as ParlAI writes it: every dialogue restarts its line numbers at 1; persona
lines ``N your persona: ...`` / ``N partner's persona: ...`` come first; every other line is
``N <partner utterance>\\t<bot response>``, and the files with candidates add two fields,
an (empty) reward and ``cand1|cand2|...``. ``__SILENCE__`` means the bot speaks first.

The parser is strict: anything else is an ``InputError`` naming file, line and problem,
because a silently mis-parsed line would shift every later turn of its dialogue. So is
suspicious input that parses: a last utterance line without its newline (a truncated
file), utterance lines with candidates beside lines without them (or a 4-field line in a
``*_no_cands`` file, a 2-field one in a file named for candidates), and, in
``check_dialogues``, duplicated dialogues and dialogues without a persona (errors unless
``prepare.duplicates`` / ``prepare.no_persona`` allow them, then warnings with counts).

Messages name the user's own file: ``fetch`` copies it into ``data/raw`` and records where
each copy came from in ``data/raw/sources.json`` (``read_sources``), and the copy is
byte-identical, so its line numbers are the source's.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.io import InputError
from pipeline.preprocessing.text import normalize
from pipeline.schema import PREPARED, SILENCE

PERSONA_PREFIXES = {"your persona:": "persona", "partner's persona:": "partner_persona"}
PERSONA_CHOICES = ("self", "other", "both", "none")
VARIANT_CHOICES = ("original", "revised")
DUPLICATES_CHOICES = ("error", "drop", "keep")  # prepare.duplicates
NO_PERSONA_CHOICES = ("error", "drop", "keep")  # prepare.no_persona
SOURCES = "sources.json"  # fetch's manifest in data/raw (pipeline.preprocessing.fetch.SOURCES)
# ParlAI's names: *_no_cands.txt has 2 fields per utterance line, the others 4 (candidates).
_PARLAI_NAME = re.compile(r"(train|valid|test)_(self|other|both|none)_(original|revised)(_no_cands)?\.txt")
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


def candidates_in_name(name: str) -> bool | None:
    """What a ParlAI file name says of its utterance lines: False for ``*_no_cands.txt``
    (2 fields), True for ParlAI's other names (4 fields: candidates), None for other names."""
    m = _PARLAI_NAME.fullmatch(name)
    return None if m is None else m.group(4) is None


def parse_lines(lines: list[str], path: str | os.PathLike, *, candidates: bool | None = None,
                terminated: bool = True) -> list[Dialogue]:
    """Parse decoded lines (line i of the list is file line i + 1) into dialogues.

    ``candidates``: whether every utterance line must have the candidates fields (True),
    must not (False) or either, as long as the whole file agrees (None). ``terminated``:
    whether the file ended with a newline; if not, a last utterance line is taken to be cut
    off (a truncated download or copy would otherwise lose the end of a response silently).
    """
    dialogues: list[Dialogue] = []
    current: Dialogue | None = None
    previous = 0
    layout: dict = {"candidates": candidates, "named": candidates is not None, "line": None}
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
        _parse_line(current, rest, lineno, path, layout)
    if current is not None:
        _finish(current, path)
    if not dialogues:
        raise InputError(path, "empty file (no dialogues)")
    last = dialogues[-1].turns[-1]
    if not terminated and last.line == len(lines):
        raise InputError(path, "truncated file? its last utterance line has no newline at the end (it "
                         f"ends {_excerpt(lines[-1][-40:])}); if the line is complete, end the file with a "
                         "newline", last.line)
    return dialogues


def _parse_line(dialogue: Dialogue, rest: str, lineno: int, path, layout: dict) -> None:
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
    _check_layout(len(fields) == 4, lineno, path, layout)
    query, response = fields[0].strip(), fields[1].strip()
    if not query:
        raise InputError(path, "empty partner utterance before the tab", lineno)
    if not response:
        raise InputError(path, "empty response after the tab", lineno)
    candidates = [c.strip() for c in fields[3].split("|")] if len(fields) == 4 and fields[3].strip() else []
    dialogue.turns.append(Turn(query, response, candidates, lineno))


def _check_layout(has: bool, lineno: int, path, layout: dict) -> None:
    """One file, one format: every utterance line with candidates, or none (file name first)."""
    if layout["candidates"] is None:
        layout["candidates"], layout["line"] = has, lineno
        return
    if has == layout["candidates"]:
        return
    if layout["named"] and has:
        raise InputError(path, "4 tab-separated fields (utterance, response, reward, candidates) in a "
                         "*_no_cands file, whose utterance lines have 2: mixed formats", lineno)
    if layout["named"]:
        raise InputError(path, "2 tab-separated fields (no candidates) in a file whose name says it has "
                         "candidates (not *_no_cands): mixed formats", lineno)
    this, first = ("4", "2 (no candidates)") if has else ("2", "4 (with candidates)")
    raise InputError(path, f"{this} tab-separated fields, but line {layout['line']} has {first}: the file "
                     "mixes utterance lines with and without candidates", lineno)


def _finish(dialogue: Dialogue, path) -> None:
    if not dialogue.turns:
        raise InputError(path, "dialogue has persona lines but no utterances", dialogue.line)


def _excerpt(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def read_dialogues(path: str | os.PathLike, name: str | None = None) -> list[Dialogue]:
    """Parse one ParlAI file; errors name ``name`` (the user's source of this copy, see
    ``source_name``) or else ``path``. The file name sets the expected format
    (``candidates_in_name``)."""
    path = Path(path)
    where = name or path
    if not path.is_file():
        raise InputError(where, "file not found")
    data = path.read_bytes()
    return parse_lines(decode_lines(data, where), where, candidates=candidates_in_name(path.name),
                       terminated=data.endswith(b"\n"))


# --- where a copy came from --------------------------------------------------------------


def read_sources(raw: str | os.PathLike) -> dict:
    """``raw/sources.json`` as fetch wrote it (``{}`` when there is none, e.g. files put into
    data/raw by hand): ``{"source": <fetch.source>, "files": {name: {"source", "size"}}}``."""
    path = Path(raw) / SOURCES
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e}); rerun the fetch stage") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not (isinstance(files, dict) and isinstance(manifest.get("source"), str)
            and all(isinstance(v, dict) and isinstance(v.get("source"), str) for v in files.values())):
        raise InputError(path, "not fetch's manifest ({source, files: {name: {source, size}}}); "
                         "rerun the fetch stage")
    return manifest


def source_name(path: str | os.PathLike, sources: dict) -> str:
    """The user's own file that ``path`` (in data/raw) is a copy of, for messages: the path
    under ``fetch.source``, or ``archive(member)``; ``path`` itself when the manifest does
    not list it or the copy was changed since (its size differs)."""
    path = Path(path)
    entry = sources.get("files", {}).get(path.name) if sources else None
    if entry is None or (path.is_file() and entry.get("size") not in (None, path.stat().st_size)):
        return str(path)
    return entry["source"]


# --- suspicious dialogues -------------------------------------------------------------------

_PERSONA_OF = {"self": ("persona",), "other": ("partner_persona",),
               "both": ("persona", "partner_persona"), "none": ()}
_PREFIX_OF = {attr: prefix for prefix, attr in PERSONA_PREFIXES.items()}


def check_dialogues(dialogues: list[Dialogue], path: str | os.PathLike, persona: str = "self",
                    duplicates: str = "error", no_persona: str = "error") -> tuple[list[Dialogue], list[str]]:
    """Dialogues without the persona the task variant conditions on (``persona``: self needs
    ``your persona:`` sentences, other ``partner's persona:``, both both, none nothing), and
    dialogues that repeat an earlier one of the file (same personas, same utterances).

    Each policy is ``error`` (an InputError naming the first such dialogue), ``drop`` or
    ``keep``; the last two return one warning line with the count. Returns the dialogues to
    keep and the warnings.
    """
    if duplicates not in DUPLICATES_CHOICES or no_persona not in NO_PERSONA_CHOICES:
        raise ValueError(f"duplicates={duplicates!r}, no_persona={no_persona!r}: expected "
                         f"{DUPLICATES_CHOICES} and {NO_PERSONA_CHOICES}")
    kept: list[Dialogue] = []
    missing: list[Dialogue] = []
    repeats: list[tuple[Dialogue, Dialogue]] = []
    seen: dict[tuple, Dialogue] = {}
    for d in dialogues:
        lacking = [attr for attr in _PERSONA_OF[persona] if not _persona(getattr(d, attr))]
        if lacking:
            if no_persona == "error":
                first = d.turns[0].line
                what = " and ".join(repr(_PREFIX_OF[a]) for a in lacking)
                how = (f"its {what} sentences are empty after normalisation"
                       if any(getattr(d, a) for a in lacking) else f"no {what} lines")
                start = f", dialogue starts at line {d.line}" if d.line != first else ""
                raise InputError(path, f"dialogue without persona: {how}"
                                 f"{start} (prepare.persona={persona}; prepare.no_persona: drop or keep "
                                 "allows it with a warning)", first)
            missing.append(d)
            if no_persona == "drop":
                continue
        key = (tuple(d.persona), tuple(d.partner_persona), tuple((t.query, t.response) for t in d.turns))
        if key in seen:
            if duplicates == "error":
                raise InputError(path, f"duplicated dialogue: same persona and utterances as the dialogue at "
                                 f"line {seen[key].line} (prepare.duplicates: drop or keep allows it "
                                 "with a warning)", d.line)
            repeats.append((d, seen[key]))
            if duplicates == "drop":
                continue
        else:
            seen[key] = d
        kept.append(d)
    warnings = []
    if missing:
        done = "dropped" if no_persona == "drop" else "kept (their rows have an empty persona)"
        warnings.append(f"{path}: {len(missing)} of {len(dialogues)} dialogues without persona "
                        f"(prepare.persona={persona}; the first at line {missing[0].turns[0].line}): {done} "
                        f"(prepare.no_persona={no_persona})")
    if repeats:
        done = "dropped" if duplicates == "drop" else "kept"
        d, first = repeats[0]
        warnings.append(f"{path}: {len(repeats)} of {len(dialogues)} dialogues duplicate an earlier one "
                        f"(same persona and utterances; first at line {d.line}, a copy of line "
                        f"{first.line}): {done} (prepare.duplicates={duplicates})")
    return kept, warnings


def is_silence(utterance: str) -> bool:
    return utterance.strip().lower() == _SILENCE_RAW


def examples(dialogues: list[Dialogue], split: str) -> pa.Table:
    """One row per bot turn, PEDNet-normalised (methods §1), in ``schema.PREPARED`` layout.

    ``history`` holds every utterance before the query (both speakers, oldest first), so a
    multi-turn context is ``history + [query]``. ``__SILENCE__`` is ParlAI's "this speaker
    said nothing": as a query it opens a bot-first dialogue (the row's query is
    ``schema.SILENCE``, which no context shows); as a bot response it is no turn to learn,
    so it gets no row. Either way it never enters the history (``silent_responses`` counts
    the second kind for prepare's log).
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
            if is_silence(turn.response):
                if not silent:
                    history.append(query)
                continue
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


def cut_overlong(dialogues: list[Dialogue], path: str | os.PathLike, max_chars: int) -> list[str]:
    """Cut every utterance and persona sentence longer than ``max_chars`` characters
    (``prepare.max_utterance_chars``) at the last space before the limit, in place; the
    warning names their count, the first line and the param. Unbounded text would otherwise
    reach normalisation and vocabulary whole (a 100,000-character line is a corrupt file, not
    a turn; the shared slice's longest is 117)."""
    first: tuple[int, int] | None = None
    count = 0

    def cut(text: str, line: int) -> str:
        nonlocal first, count
        if len(text) <= max_chars:
            return text
        count += 1
        first = first or (line, len(text))
        head = text[:max_chars]
        return head[: head.rfind(" ")] if " " in head.strip() else head

    for d in dialogues:
        d.persona = [cut(x, d.line) for x in d.persona]
        d.partner_persona = [cut(x, d.line) for x in d.partner_persona]
        for t in d.turns:
            t.query, t.response = cut(t.query, t.line), cut(t.response, t.line)
            t.candidates = [cut(c, t.line) for c in t.candidates]
    if not count:
        return []
    return [f"{path}: {count} overlong utterance{'s' * (count > 1)} (over prepare.max_utterance_chars="
            f"{max_chars} characters; the first at line {first[0]}, {first[1]} characters): cut to "
            f"{max_chars} characters"]


def silent_responses(dialogues: list[Dialogue]) -> list[Turn]:
    """Bot turns whose response is ``__SILENCE__`` (``examples`` gives them no row)."""
    return [t for d in dialogues for t in d.turns if is_silence(t.response)]


def _persona(sentences: list[str]) -> list[str]:
    # A sentence that is only a period normalises to nothing: it carries no persona.
    return [s for s in (normalize(x, persona=True) for x in sentences) if s]


def short_response_mask(table: pa.Table, min_tokens: int) -> list[bool]:
    """True for rows whose normalised response has fewer than ``min_tokens`` tokens."""
    return [len(r.split()) < min_tokens for r in table.column("response").to_pylist()]
