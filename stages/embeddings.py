"""Stage `embeddings`: 300-d word vectors for the vocabulary -> data/embeddings/vectors.parquet."""

from __future__ import annotations

if __name__ == "__main__":  # as a stage, before NumPy/torch load: bytes independent of the CPU
    from pipeline.preprocessing.portable import pin

    pin()

import logging

from pipeline.io import load_params, read_parquet, run_stage, write_parquet
from pipeline.preprocessing.embeddings import align, load_pretrained, to_table, train_word2vec
from pipeline.preprocessing.vocab import training_texts

log = logging.getLogger(__name__)

PREPARED = "data/prepared"
OUT = "data/embeddings/vectors.parquet"


def main() -> None:
    # gensim's lifecycle chatter off; Word2Vec's per-epoch lines stay as its progress report
    logging.getLogger("gensim").setLevel(logging.WARNING)
    logging.getLogger("gensim.models.word2vec").setLevel(logging.INFO)
    p = load_params("embeddings")
    vocab_table = read_parquet(f"{PREPARED}/vocab.parquet")
    vocab = vocab_table.column("token").to_pylist()
    counts = vocab_table.column("count").to_numpy()
    log.info("read %s/vocab.parquet (%d tokens)", PREPARED, len(vocab))
    if p.get("pretrained"):
        vectors = load_pretrained(p["pretrained"], p["dim"])
    else:
        train = read_parquet(f"{PREPARED}/train.parquet")
        sentences = list(training_texts(train))
        log.info("training Word2Vec on %d sentences (%d training rows)", len(sentences), train.num_rows)
        vectors = train_word2vec(
            sentences,
            dim=p["dim"],
            window=p["window"],
            epochs=p["epochs"],
            min_count=p["min_count"],
            sg=p["sg"],
            seed=p["seed"],
        )
    matrix, covered = align(vocab, vectors, p["dim"], p["seed"])
    known = [t in vectors for t in vocab]
    weighted = counts[known].sum() / max(counts.sum(), 1)
    log.info(
        "coverage: %d of %d tokens have a %s vector (%.1f%%; %.1f%% of training token occurrences); "
        "%d got a seeded random vector, <pad> zeros",
        covered,
        len(vocab),
        "pretrained" if p.get("pretrained") else "Word2Vec",
        100.0 * covered / len(vocab),
        100.0 * weighted,
        len(vocab) - covered - 1,
    )
    write_parquet(to_table(vocab, matrix), OUT)


if __name__ == "__main__":
    run_stage(main)
