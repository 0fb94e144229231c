"""Stage `prepare`: ParlAI Persona-Chat files in data/raw -> data/prepared/{split,vocab}.parquet."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from pipeline import parlai
from pipeline.io import InputError, atomic_dir, load_params, run_stage, write_parquet
from pipeline.schema import SPLITS
from pipeline.vocab import build_vocab, count_tokens, training_texts

log = logging.getLogger(__name__)

RAW = Path("data/raw")
OUT = Path("data/prepared")


def split_file(raw: Path, split: str, p: dict) -> Path:
    """The file for one split; falls back to the other candidates form if only that exists."""
    wanted = raw / parlai.file_name(split, p["persona"], p["variant"], bool(p["candidates"]))
    other = raw / parlai.file_name(split, p["persona"], p["variant"], not p["candidates"])
    if wanted.is_file():
        return wanted
    if other.is_file():
        log.warning("%s not found, using %s", wanted, other)
        return other
    raise InputError(wanted, f"missing {split} split (params prepare.persona={p['persona']}, "
                     f"variant={p['variant']}, candidates={p['candidates']})")


def check_params(p: dict) -> None:
    for key, choices in (("persona", parlai.PERSONA_CHOICES), ("variant", parlai.VARIANT_CHOICES)):
        if p[key] not in choices:
            raise InputError("params.yaml", f"prepare.{key}: expected one of {', '.join(choices)}, got {p[key]!r}")


def main() -> None:
    p = load_params("prepare")
    check_params(p)
    # Read and check every split before writing anything.
    tables: dict[str, pa.Table] = {}
    for split in SPLITS:
        path = split_file(RAW, split, p)
        dialogues = parlai.read_dialogues(path)
        table = parlai.examples(dialogues, split)
        short = parlai.short_response_mask(table, p["min_response_tokens"])
        kept = table.filter(pa.array([not s for s in short]))
        log.info("%s: read %d dialogues, %d bot turns from %s; min_response_tokens=%d dropped %d; "
                 "%d rows", split, len(dialogues), table.num_rows, path, p["min_response_tokens"],
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
