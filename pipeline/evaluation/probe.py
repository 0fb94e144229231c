"""Where does a persona model's persona use break down: selection or decoding?

    python -m pipeline.evaluation.probe pednet [--split test] [--out reports/probes/pednet.json] [--no-decode]

For a trained model that selects one persona sentence (PEDNet's CDNet) this decodes the
split twice, with the model's own selection p̂ and with the optimal-persona label p* of
the ``persona_labels`` stage as an oracle (None -> no persona), and reports for both the
persona metrics (methods §4) and Distinct, plus the selection's agreement with the labels.
If the oracle's persona F1 is far above the model's, selection is the bottleneck; if both
are low, the decoder does not use the persona it is given. With a selection prior it also
scores the selection with the prior zeroed and by the prior alone (``selection_parts``).
Not a DVC stage: an analysis tool over the trained checkpoint and data/ (run `dvc repro`
first).
"""

from __future__ import annotations

import argparse
import logging
import types
from pathlib import Path

import torch

from pipeline.dataset import PRIORS, Batch, Vocab, load_split
from pipeline.decode import generate_rows
from pipeline.evaluation import metrics
from pipeline.io import InputError, load_params, run_stage, write_json
from pipeline.train import load_trained

log = logging.getLogger(__name__)

REPORTED = ("persona_recall", "persona_precision", "persona_f1", "persona_coverage", "distinct_1", "distinct_2")


def oracle_encode(self, batch: Batch):
    """CDNet's encode with p̂ replaced by the optimal-persona label (−1: no persona)."""
    state = type(self).encode(self, batch)
    words, _ = self.encode_persona(batch)
    label = batch.persona_label
    rows = torch.arange(batch.size, device=label.device)
    i = label.clamp(min=0)
    return self.with_persona(state, words[rows, i], batch.persona_mask[rows, i], label)


def selection_agreement(rows: list[dict], labels: list[int]) -> dict[str, float]:
    chosen = [-1 if r["selected_persona"] is None else r["selected_persona"] for r in rows]
    with_label = [(c, y) for c, y in zip(chosen, labels, strict=True) if y >= 0]
    return {
        "selection_accuracy": sum(c == y for c, y in zip(chosen, labels, strict=True)) / max(len(rows), 1),
        "selection_accuracy_where_labelled": sum(c == y for c, y in with_label) / max(len(with_label), 1),
        "none_selected": sum(c < 0 for c in chosen) / max(len(rows), 1),
        "none_labelled": sum(y < 0 for y in labels) / max(len(labels), 1),
    }


@torch.no_grad()
def selection_parts(model, dataset, batch_size: int = 256) -> dict | None:
    """For a model with a selection prior (pednet.selection_prior): CDNet's last-hop choice
    over the persona sentences scored three ways on labelled turns: as trained, with the prior
    zeroed (the memory network alone) and by the prior alone (w · prior); plus each one's
    spread over a turn's sentences (mean standard deviation), which says which of them
    decides. None without a prior."""
    if not model.inputs & PRIORS.keys():
        return None
    model.eval()
    device = next(model.parameters()).device
    ways = ("model", "memory_alone", "prior_alone")
    hits, spread, labelled = dict.fromkeys(ways, 0), dict.fromkeys(ways, 0.0), 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset))))).to(device)
        exists = batch.persona_exists
        scores = {"model": model.encode(batch)["persona_logits"][:, :-1],
                  "prior_alone": model.prior_scale * batch.persona_prior}
        batch.persona_prior = torch.zeros_like(batch.persona_prior)
        scores["memory_alone"] = model.encode(batch)["persona_logits"][:, :-1]
        keep = (batch.persona_label >= 0) & exists.any(1)
        labelled += int(keep.sum())
        n = exists.sum(1).clamp(min=2).to(torch.float32)
        for name, x in scores.items():
            x = x.float().masked_fill(~exists, -torch.inf)
            hits[name] += int((x.argmax(1) == batch.persona_label)[keep].sum())
            centred = torch.where(exists, x - x.masked_fill(~exists, 0).sum(1, keepdim=True) / n[:, None], 0)
            spread[name] += float((centred.pow(2).sum(1) / (n - 1)).sqrt()[keep].sum())
    return {"labelled_turns": labelled, "prior_scale": round(float(model.prior_scale), 4),
            **{f"accuracy_{k}": round(v / max(labelled, 1), 4) for k, v in hits.items()},
            **{f"spread_{k}": round(v / max(labelled, 1), 4) for k, v in spread.items()}}


def probe(model_name: str, split: str = "test", data_dir: Path = Path("data"), seed: int = 1,
          decode: bool = True) -> dict:
    best = Path("checkpoints") / model_name / f"seed{seed}" / "best.pt"
    if not best.exists():
        raise InputError(best, "no trained model (run `dvc repro` first)")
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    model = load_trained(best, vocab)
    if not hasattr(model, "with_persona") or "persona_label" not in type(model).inputs:
        raise InputError(best, f"{model.name} does not select one persona sentence by label (PEDNet does)")
    dataset = load_split(split, vocab, type(model).data_config(model.params), data_dir)
    labels = [int(x) for x in dataset.collate(list(range(len(dataset)))).persona_label.tolist()]
    out: dict = {"model": model_name, "seed": seed, "split": split, "examples": len(dataset)}
    if (parts := selection_parts(model, dataset)) is not None:
        out["selection_parts"] = parts
        log.info("selection parts: %s", parts)
    if decode:
        p, e = load_params("generate"), load_params("evaluate")
        idf = metrics.load_idf(metrics.PERSONA_IDF)
    for name in ("model", "oracle") if decode else ():
        if name == "oracle":
            model.encode = types.MethodType(oracle_encode, model)
        rows = generate_rows(model, dataset, method=p["method"], beam_size=p["beam_size"], max_len=p["max_len"],
                             length_penalty=p.get("length_penalty", 0.0), batch_size=p["batch_size"])
        hyps = [r["hypothesis"] for r in rows]
        scores = metrics.persona_metrics(hyps, [r["persona"] for r in rows], idf, e["idf_missing"])
        toks = [h.split() for h in hyps]
        scores.update(distinct_1=metrics.distinct(toks, 1), distinct_2=metrics.distinct(toks, 2))
        out[name] = {k: round(float(scores[k]), 5) for k in REPORTED}
        out[name].update({k: round(v, 5) for k, v in selection_agreement(rows, labels).items()})
        log.info("%s selection: %s", name, out[name])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.evaluation.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a run under checkpoints/ whose model selects a persona sentence (pednet)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=1, help="training seed of the run")
    ap.add_argument("--data", default="data")
    ap.add_argument("--out", help="default: reports/probes/<model>.json")
    ap.add_argument("--no-decode", dest="decode", action="store_false",
                    help="only the selection parts (a model with a selection prior): no decoding, seconds")
    args = ap.parse_args(argv)
    result = probe(args.model, args.split, Path(args.data), args.seed, args.decode)
    write_json(result, args.out or f"reports/probes/{args.model}.json")
    if "selection_parts" in result:
        print("selection parts: " + ", ".join(f"{k} {v}" for k, v in result["selection_parts"].items()))
    for name in ("model", "oracle") if args.decode else ():
        print(f"{name:>6} selection: " + ", ".join(f"{k} {v:.4f}" for k, v in result[name].items()))


if __name__ == "__main__":
    run_stage(main)
