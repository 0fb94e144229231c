"""Train the MSN matching model: ``python -m stages.msn`` (dvc stage ``msn``).

Reads params `msn`, data/prepared/{train,valid,vocab}.parquet and data/embeddings; writes
checkpoints/msn/best.pt (``torch.load(weights_only=True)``) and reports/msn.json
(valid R10@1, R10@2, R10@5, MRR with 1 positive : 9 random negatives).

Not byte-identical across thread counts or CPUs: float sums in training depend on how
they are split; equal within seed noise (tests/test_determinism.py; README "Determinism").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeline.contrastive.msn import MSNTrainConfig, build_msn, load_msn_data, train_msn
from pipeline.dataset import Vocab
from pipeline.io import load_params, run_stage, write_json
from pipeline.models.layers import load_embedding_matrix

log = logging.getLogger(__name__)


def main(data_dir: str | Path = "data", out_dir: str | Path = ".") -> dict:
    p = load_params("msn")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    embeddings = load_embedding_matrix(data_dir / "embeddings" / "vectors.parquet", vocab.itos)
    torch.manual_seed(p.get("seed", 1))
    model = build_msn(p, vocab, embeddings)
    cfg = MSNTrainConfig.from_params(p)
    train = load_msn_data(data_dir / "prepared" / "train.parquet", vocab, model.config.max_words)
    valid = load_msn_data(data_dir / "prepared" / "valid.parquet", vocab, model.config.max_words)
    n_params = sum(x.numel() for x in model.parameters() if x.requires_grad)
    log.info("msn: %d train / %d valid examples, %d trainable parameters, %s", len(train), len(valid), n_params,
             model.config)
    start = time.perf_counter()
    best = train_msn(model, train, valid, cfg, checkpoint=out_dir / "checkpoints" / "msn" / "best.pt")
    best["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(best, out_dir / "reports" / "msn.json")
    return best


if __name__ == "__main__":
    run_stage(main)
