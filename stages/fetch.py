"""Stage `fetch`: ParlAI's personachat.tgz (or a local copy) -> data/raw/*.txt (with
data/raw/sources.json: which file of the source each one copies), and the Persona Coverage
idf table (``fetch.idf``) -> data/persona_idf/idf.tsv."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.io import atomic_dir, load_params, run_stage
from pipeline.preprocessing.fetch import IDF, copy_idf, fetch, write_sources

log = logging.getLogger(__name__)

OUT = Path("data/raw")


def main() -> None:
    p = load_params("fetch")
    log.info("fetch.source=%s", p["source"])
    with atomic_dir(OUT) as tmp:
        sources = fetch(p, tmp, root=Path.cwd())
        write_sources(tmp, p["source"], sources)
    names = list(sources)
    total = sum((OUT / n).stat().st_size for n in names)
    log.info("wrote %s: %d files, %d bytes (%s)", OUT, len(names), total, ", ".join(names))
    if p.get("idf"):
        copy_idf(p["idf"], IDF, root=Path.cwd())


if __name__ == "__main__":
    run_stage(main)
