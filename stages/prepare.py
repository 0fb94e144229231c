"""Stage `prepare`: ParlAI Persona-Chat files in data/raw -> data/prepared/{split,vocab}.parquet.

Messages name the user's own files (``fetch.source``, via data/raw/sources.json), not the
copies. Duplicated dialogues and dialogues without a persona are errors unless
``prepare.duplicates`` / ``prepare.no_persona`` say ``drop`` or ``keep`` (then a warning
with the count)."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from pipeline.io import InputError, atomic_dir, load_params, run_stage, write_parquet
from pipeline.preprocessing import parlai
from pipeline.preprocessing.vocab import build_vocab, count_tokens, training_texts
from pipeline.schema import SPLITS

log = logging.getLogger(__name__)

RAW = Path("data/raw")
OUT = Path("data/prepared")
MAX_UTTERANCE_CHARS = 1000  # prepare.max_utterance_chars' default


def split_file(raw: Path, split: str, p: dict, sources: dict | None = None) -> Path:
    """The file for one split; falls back to the other candidates form if only that exists.
    With fetch's manifest (``sources``), messages name fetch.source rather than ``raw``."""
    wanted = raw / parlai.file_name(split, p["persona"], p["variant"], bool(p["candidates"]))
    other = raw / parlai.file_name(split, p["persona"], p["variant"], not p["candidates"])
    if wanted.is_file():
        return wanted
    if other.is_file():
        log.warning("%s not found, using %s", wanted.name if sources else wanted,
                    parlai.source_name(other, sources or {}))
        return other
    what = (f"missing {split} split (params prepare.persona={p['persona']}, variant={p['variant']}, "
            f"candidates={p['candidates']})")
    if sources:
        raise InputError(sources["source"], f"no file {wanted.name}: {what}")
    raise InputError(wanted, what)


def check_params(p: dict) -> None:
    for key, choices in (("persona", parlai.PERSONA_CHOICES), ("variant", parlai.VARIANT_CHOICES),
                         ("duplicates", parlai.DUPLICATES_CHOICES), ("no_persona", parlai.NO_PERSONA_CHOICES)):
        if p.get(key, choices[0]) not in choices:
            raise InputError("params.yaml", f"prepare.{key}: expected one of {', '.join(choices)}, got {p[key]!r}")


def main() -> None:
    p = load_params("prepare")
    check_params(p)
    # Read and check every split before writing anything.
    tables: dict[str, pa.Table] = {}
    sources = parlai.read_sources(RAW)
    for split in SPLITS:
        path = split_file(RAW, split, p, sources)
        name = parlai.source_name(path, sources)
        read = parlai.read_dialogues(path, name)
        dialogues, warnings = parlai.check_dialogues(
            read, name, p["persona"], p.get("duplicates", "error"), p.get("no_persona", "error"))
        warnings += parlai.cut_overlong(dialogues, name, p.get("max_utterance_chars", MAX_UTTERANCE_CHARS))
        for w in warnings:
            log.warning("%s", w)
        if silent := parlai.silent_responses(dialogues):
            log.info("%s: %d bot responses are __SILENCE__ (the first at line %d): no row, not in the history",
                     name, len(silent), silent[0].line)
        table = parlai.examples(dialogues, split)
        short = parlai.short_response_mask(table, p["min_response_tokens"])
        kept = table.filter(pa.array([not s for s in short]))
        log.info("%s: read %d dialogues (%d kept), %d bot turns from %s; min_response_tokens=%d dropped %d; "
                 "%d rows", split, len(read), len(dialogues), table.num_rows, name, p["min_response_tokens"],
                 sum(short), kept.num_rows)
        tables[split] = (table, kept)
    # The vocabulary counts all training text, filtered turns included: they stay in the
    # history of later turns.
    counts = count_tokens(training_texts(tables["train"][0]))
    vocab = build_vocab(counts, p["max_vocab"], p["min_count"])
    log.info("vocabulary: %d tokens, specials included, from %d distinct training tokens "
             "(max_vocab=%d, min_count=%d)", vocab.num_rows, len(counts), p["max_vocab"], p["min_count"])
    with atomic_dir(OUT) as tmp:
        for split, (_, kept) in tables.items():
            write_parquet(kept, tmp / f"{split}.parquet")
        write_parquet(vocab, tmp / "vocab.parquet")
    log.info("wrote %s: %s", OUT, ", ".join(f"{s} {k.num_rows}" for s, (_, k) in tables.items()))


if __name__ == "__main__":
    run_stage(main)
