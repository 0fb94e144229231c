"""Can PEDNet's selector learn to select on this data at all? A diagnostic (issue: CDNet
selects near chance).

    python -m pipeline.evaluation.selection_probe [--epochs 3] [--set freeze_embeddings=true ...]

Trains CDNet's selection path alone (context encoder, persona encoder, specific-word query,
3-hop memory; no decoder) with the persona cross-entropy as its only loss, from the same
initialisation as a PEDNet run (params.yaml's `model` and `pednet`, Word2Vec vectors), and
after every epoch scores it on train and valid: the cross-entropy over M + 1 classes (None
the last) and the accuracy on turns labelled with a persona sentence, as
``pipeline.evaluation.selection`` scores every selector. Writes reports/selection_probe.json.

Reading it: if train accuracy climbs while valid accuracy stays flat, the selector
overfits the 7,305 training turns (a data-size ceiling, not a bug); if train accuracy
stays at chance too, the selection path cannot learn (a bug or an optimisation problem).
Not a DVC stage: an analysis over data/ (run the preprocessing first).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from pipeline.dataset import Vocab, batch_indices, load_split
from pipeline.io import load_params, run_stage, write_json
from pipeline.models import ModelContext, build_model, get_model_class, model_params
from pipeline.models.layers import load_embedding_matrix

log = logging.getLogger(__name__)
REPORT = "reports/selection_probe.json"


def score(model, dataset, batch_size: int = 256) -> dict:
    """Cross-entropy (None = class M) over all turns, accuracy over persona-labelled turns."""
    was = model.training
    model.eval()
    ce, n, correct, labelled = 0.0, 0, 0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset)))))
            state = model.encode(batch)
            logits = state["persona_logits"].float()
            ce += F.cross_entropy(logits, model.persona_target(batch, logits.shape[1]), reduction="sum").item()
            n += batch.size
            keep = batch.persona_label >= 0
            labelled += int(keep.sum())
            correct += int((state["selected"] == batch.persona_label)[keep].sum())
    model.train(was)
    return {"persona_ce": ce / max(n, 1), "accuracy_labelled": correct / max(labelled, 1)}


def probe(epochs: int, overrides: dict, data: Path = Path("data"), lr: float = 1e-3, batch_size: int = 64,
          seed: int = 1) -> dict:
    params = {**model_params(load_params(), "pednet"), **overrides}
    vocab = Vocab.load(data / "prepared" / "vocab.parquet")
    config = get_model_class("pednet").data_config(params)
    train, valid = (load_split(s, vocab, config, data) for s in ("train", "valid"))
    torch.manual_seed(seed)
    emb = load_embedding_matrix(data / "embeddings" / "vectors.parquet", vocab.itos)
    model = build_model("pednet", params, ModelContext.from_vocab(vocab, emb, train))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = torch.Generator().manual_seed(seed)
    curve = [{"epoch": 0, "train": score(model, train), "valid": score(model, valid)}]
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for index in batch_indices(train.lengths(), batch_size, order, True):
            batch = train.collate(index)
            logits = model.encode(batch)["persona_logits"].float()
            loss = F.cross_entropy(logits, model.persona_target(batch, logits.shape[1]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        curve.append({"epoch": epoch, "train": score(model, train), "valid": score(model, valid)})
        log.info("epoch %d (%.0f s): train %s, valid %s", epoch, time.perf_counter() - start,
                 curve[-1]["train"], curve[-1]["valid"])
    best = max(curve[1:], key=lambda c: c["valid"]["accuracy_labelled"]) if epochs else curve[0]
    return {"overrides": overrides, "lr": lr, "batch_size": batch_size, "seed": seed, "curve": curve,
            "best_valid_accuracy_labelled": best["valid"]["accuracy_labelled"], "best_epoch": best["epoch"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="pednet/model params to override, e.g. freeze_embeddings=true")
    parser.add_argument("--out", default=REPORT)
    args = parser.parse_args(argv)
    if bad := [s for s in args.set if "=" not in s]:
        parser.error(f"--set {bad[0]!r}: expected KEY=VALUE")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    write_json(probe(args.epochs, overrides), args.out)


if __name__ == "__main__":
    run_stage(main)
