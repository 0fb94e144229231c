"""Decode the test split with a trained generator: ``python -m stages.generate <model>``.

Reads params `generate` and checkpoints/<model>/best.pt; writes
reports/generations/<model>.parquet (schema.GENERATIONS, one row per test turn).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyarrow as pa
import torch

from pipeline import schema
from pipeline.dataset import Vocab, load_split
from pipeline.decode import generate_rows
from pipeline.io import InputError, load_params, run_stage, write_parquet
from pipeline.train import load_trained

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="seq2seq | gpmn | postks | pednet (a checkpoints/<model> run)")
    parser.add_argument("--data", default="data")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    p = load_params("generate")
    data_dir = Path(args.data)
    best = Path("checkpoints") / args.model / "best.pt"
    if not best.exists():
        raise InputError(best, "no trained model (run the train stage first)")
    device = torch.device("cuda" if p.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
                          else "cpu")
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    model = load_trained(best, vocab, device)
    dataset = load_split(args.split, vocab, type(model).data_config(model.params), data_dir)
    rows = generate_rows(model, dataset, method=p["method"], beam_size=p["beam_size"], max_len=p["max_len"],
                         length_penalty=p.get("length_penalty", 0.0), batch_size=p["batch_size"], device=device)
    empty = sum(not r["hypothesis"] for r in rows)
    log.info("%s: %d %s generations (%s), %d empty", args.model, len(rows), args.split, p["method"], empty)
    return write_parquet(pa.Table.from_pylist(rows, schema=schema.GENERATIONS),
                         Path("reports") / "generations" / f"{args.model}.parquet")


if __name__ == "__main__":
    run_stage(main)
