"""Controls for DeepRL's reward: what does r = λ1 r1 + λ2 r2 + λ3 r3 (pipeline/learners/rl.py)
give the gold replies, the MLE model's greedy replies, the trained policy's and a few
constant replies, on the same validation rows?

    python -m pipeline.learners.reward_control [--reference seq2seq_history] [--seed 1] [--rows 512]

Writes reports/probes/deeprl_reward_control.json: per reply source, the mean of each reward
term. If a constant generic reply out-scores the gold replies, the policy gradient is doing
its job when it collapses onto such a reply: the objective's optimum is generic, whatever
the optimiser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.dataset import Batch, DialogueDataset, Vocab, load_split
from pipeline.io import load_params, run_stage, write_json
from pipeline.learners.rl import DeepRL, DeepRLConfig
from pipeline.models import get_model_class, run_architecture, run_model_params
from pipeline.models.seq2seq_backward import pad_rows
from pipeline.train import load_trained, run_dirs

CONSTANTS = ("what do you do for a living ?", "i am a nurse . what do you do for work ?", "i do not know .")
Replies = Callable[[Batch], torch.Tensor]  # a batch -> [B, T] reply tokens


def constant(vocab: Vocab, text: str) -> Replies:
    ids = torch.tensor(vocab.encode(text, eos=True))
    return lambda batch: pad_rows([ids] * batch.size, vocab.pad, batch.query.device)[0]


def greedy_replies(model, max_len: int) -> Replies:
    from pipeline.decode import greedy

    return lambda batch: greedy(model.eval(), batch, max_len).tokens


@torch.no_grad()
def reward_table(rl: DeepRL, data: DialogueDataset, sources: dict[str, Replies], rows: int,
                 batch_size: int = 64) -> dict[str, dict[str, float]]:
    """{source: {ease, flow, coherence, reward}} averaged over the first ``rows`` rows."""
    n = min(rows, len(data))
    sums: dict[str, dict[str, float]] = {name: {} for name in sources}
    for lo in range(0, n, batch_size):
        batch = data.collate(list(range(lo, min(lo + batch_size, n))))
        for name, replies in sources.items():
            for term, values in rl.rewards(batch, replies(batch)).items():
                sums[name][term] = sums[name].get(term, 0.0) + float(values.sum())
    return {name: {term: v / max(n, 1) for term, v in terms.items()} for name, terms in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.learners.reward_control", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="seq2seq_history")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rows", type=int, default=512, help="first N valid rows")
    ap.add_argument("--data", default="data")
    ap.add_argument("--out", default="reports/probes/deeprl_reward_control.json")
    args = ap.parse_args(argv)
    params, data = load_params(), Path(args.data)
    vocab = Vocab.load(data / "prepared" / "vocab.parquet")
    model = run_architecture(params, args.reference)
    valid = load_split("valid", vocab, get_model_class(model).data_config(run_model_params(params, args.reference)), data)
    ckpt = {name: run_dirs(name, args.seed)[0] / "best.pt"
            for name in (args.reference, f"{args.reference}_backward", f"{args.reference}_deeprl")}
    cfg = DeepRLConfig.from_params(params.get("deeprl") or {})
    scorer = load_trained(ckpt[args.reference], vocab)
    rl = DeepRL(cfg, scorer, load_trained(ckpt[f"{args.reference}_backward"], vocab), vocab)
    sources: dict[str, Replies] = {"gold": lambda batch: batch.response,
                                   "mle_greedy": greedy_replies(scorer, cfg.max_len)}
    if ckpt[f"{args.reference}_deeprl"].exists():
        sources["deeprl_greedy"] = greedy_replies(load_trained(ckpt[f"{args.reference}_deeprl"], vocab), cfg.max_len)
    sources.update({f"constant: {t}": constant(vocab, t) for t in CONSTANTS})
    result = {"reference": args.reference, "seed": args.seed, "rows": min(args.rows, len(valid)),
              "weights": [cfg.ease_weight, cfg.flow_weight, cfg.coherence_weight],
              "sources": reward_table(rl, valid, sources, args.rows)}
    write_json(result, args.out)
    for name, terms in result["sources"].items():
        print(f"{name:48s} " + "  ".join(f"{k} {v:+.3f}" for k, v in terms.items()))
    return result


if __name__ == "__main__":
    run_stage(main)
