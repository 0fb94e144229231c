"""Decode the test split with a trained generator:
``python -m stages.generate <run> --seed K`` (dvc stage ``generate@<run>-<K>``).

Reads params `generate` and checkpoints/<run>/seed<K>/best.pt; writes
reports/generations/<run>/seed<K>.parquet (schema.GENERATIONS, one row per test turn),
tracked in git so that a clone can re-score what each model said.

Also the collapse diagnostic (columns ``log_p_own`` / ``log_p_shuffled``): the reference's
per-token log-prob given its own context and given another test example's
(pipeline.decode.query_log_probs; the pairing is params `generate.query_shuffle_seed`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyarrow as pa
import torch
import yaml

from pipeline import schema
from pipeline.dataset import Vocab, load_split
from pipeline.decode import QUERY_SHUFFLE_SEED, derangement, generate_rows, query_log_probs
from pipeline.io import InputError, load_params, run_stage, write_parquet
from pipeline.params_schema import validate_run
from pipeline.train import PRECISIONS, autocast, load_trained, run_dirs

log = logging.getLogger(__name__)


def generations_path(run: str, seed: int) -> Path:
    return Path("reports") / "generations" / run / f"seed{seed}.parquet"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="a run under checkpoints/: seq2seq | gpmn | postks | pednet | seq2seq_history_gcl ...")
    parser.add_argument("--seed", type=int, default=1, help="training seed (checkpoints/<run>/seed<K>)")
    parser.add_argument("--data", default="data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best.pt (the run's selection) or last.pt (its final step), written as run <run>_last")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="decode-time model params (a diagnostic, e.g. postks's test_selection=label); "
                             "needs --as")
    parser.add_argument("--as", dest="as_run", help="write the generations as this run (with --set)")
    args = parser.parse_args(argv)
    if bad := [s for s in args.set if "=" not in s]:
        parser.error(f"--set {bad[0]!r}: expected KEY=VALUE")
    if args.set and not args.as_run:
        parser.error("--set changes the model: name its generations with --as RUN")
    p = load_params("generate")
    data_dir = Path(args.data)
    best = run_dirs(args.model, args.seed)[0] / f"{args.checkpoint}.pt"
    out_run = args.as_run or (args.model if args.checkpoint == "best" else f"{args.model}_last")
    if not best.exists():
        raise InputError(best, "no trained model (run the train stage first)")
    device = torch.device("cuda" if p.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
                          else "cpu")
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    model = load_trained(best, vocab, device)
    for key, value in (s.split("=", 1) for s in args.set):
        if key not in model.params:
            raise InputError(best, f"--set {key}: not a param of this {type(model).name} model")
        value = yaml.safe_load(value)
        try:  # the same check as the key in params.yaml (a bad choice: one line, not a traceback mid-decode)
            validate_run(type(model).name, {"model": type(model).name, key: value})
        except InputError as e:
            raise InputError(best, f"--set {key}={value!r}: {e}") from None
        model.params[key] = value
    dataset = load_split(args.split, vocab, type(model).data_config(model.params), data_dir)
    if p.get("precision", "auto") not in PRECISIONS:
        raise InputError("params.yaml", f"generate.precision: expected one of {', '.join(PRECISIONS)}, got {p['precision']!r}")
    shuffle_seed = p.get("query_shuffle_seed", QUERY_SHUFFLE_SEED)
    if not isinstance(shuffle_seed, int) or isinstance(shuffle_seed, bool) or shuffle_seed < 0:
        raise InputError("params.yaml", f"generate.query_shuffle_seed: expected an integer >= 0, got {shuffle_seed!r}")
    if len(dataset) < 2:
        raise InputError(data_dir / "prepared" / f"{args.split}.parquet",
                         f"{len(dataset)} example(s): the shuffled-context diagnostic needs two")
    with autocast(device, p.get("precision", "auto")):
        rows = generate_rows(model, dataset, method=p["method"], beam_size=p["beam_size"], max_len=p["max_len"],
                             length_penalty=p.get("length_penalty", 0.0), batch_size=p["batch_size"],
                             device=device)
        partner = derangement(len(dataset), shuffle_seed)
        own, shuffled = query_log_probs(model, dataset, batch_size=p["batch_size"], device=device,
                                        partner=partner)
    for row, a, b in zip(rows, own.tolist(), shuffled.tolist(), strict=True):
        row["log_p_own"], row["log_p_shuffled"] = a, b
    empty = sum(not r["hypothesis"] for r in rows)
    log.info("%s: %d %s generations (%s), %d empty", args.model, len(rows), args.split, p["method"], empty)
    same = sum(dataset[i].query.tobytes() == dataset[int(j)].query.tobytes() for i, j in enumerate(partner))
    log.info("%s: query gain %.4f nats/token (log p(r|c) %.4f, log p(r|c') %.4f; shuffle seed %d, "
             "%d of %d pairs have identical queries)", args.model, float((own - shuffled).mean()),
             float(own.mean()), float(shuffled.mean()), shuffle_seed, same, len(partner))
    return write_parquet(pa.Table.from_pylist(rows, schema=schema.GENERATIONS),
                         generations_path(out_run, args.seed))


if __name__ == "__main__":
    run_stage(main)
