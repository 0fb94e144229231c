"""Every stage up to `reference_scores` on the raw corpus replicated N times: wall seconds
and peak RSS per stage and factor, plus one MLE epoch of Seq2Seq (`seq2seq_history`) and of
PEDNet (`pednet`) and the decoding of 1,000 test turns, each projected where not run whole.

``python -m benchmarks --only scale [--scales 1,3,9,18]``. Each factor gets a scratch copy of
the project (pipeline/, stages/, a params.yaml reading the replicated corpus) and runs the real
stages there as subprocesses, each started by a small trampoline so that its peak RSS is its
own. How each stage is measured (``how`` in its entry):

- ``full``: the stage as the DAG runs it (fetch -> groups at every factor; score_groups,
  select_groups and reference_scores up to ``full_up_to``).
- ``max_steps``: training stages (msn, matcher, the MLE runs) never train to convergence
  here. Each runs twice, capped at ``steps = (short, long)`` optimizer steps;
  seconds per step = (wall(long) - wall(short)) / (long - short), so setup, data loading
  and the final validation cancel. Projected from those steps: one full epoch
  (ceil(training rows / batch size) steps), the configured epochs (`train.epochs`, a cap:
  reaching it means "not converged"; MLE epochs plus the per-epoch validation share of
  benchmarks.projection) and, for the MLE runs, the epochs the committed ×1 runs took to
  converge. msn and matcher evaluate as configured (`msn.eval_examples` valid examples:
  a fixed cost, so their whole stage is the long run + the configured steps it left out).
- ``subset``: the pools of `groups` emptied except for a seeded sample of ``sample_rows`` rows
  per split (train and valid) before score_groups, so that score_groups, select_groups and
  reference_scores run on that sample. Their work is linear in units (texts the MiniLM
  scorer encodes, candidate pairs, scored pairs) on top of a fixed cost: at ×1 (up to
  ``full_up_to``) they run whole and on the sample, which gives the seconds per unit; above
  it, the whole stage = the sampled run + that rate × the units it left out.
- ``decode``: stages.generate on a seeded sample of ``decode_rows`` test rows (the whole
  split if smaller), projected linearly to the whole test split.

reference_scores and decoding read the seq2seq_history checkpoint of its long measured
run (a few dozen steps): their cost depends on the rows, not on how well the model learnt.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks import projection
from pipeline import stage_times

ROOT = Path(__file__).resolve().parents[1]
PREPROCESSING = ("fetch", "prepare", "embeddings", "pmi", "persona_labels", "congeneric", "groups")
MLE_RUNS = ("seq2seq_history", "pednet")
# every row of the scale table, in DAG order
STAGES = (*PREPROCESSING, "msn", "matcher", "score_groups", "select_groups", "reference_scores",
          *(f"train@{r}" for r in MLE_RUNS), "decode@seq2seq_history")
BEFORE_TRAINING = (*PREPROCESSING, "msn", "matcher", "score_groups", "select_groups")
GOAL = {"factor": 9, "minutes": 15, "peak_rss_gb": 8}  # fetch -> groups at the full corpus's size


_UTTERANCE = re.compile(r"^(\d+ )(your persona: |partner's persona: )?(.*)$")


def marked_copy(text: str, k: int) -> str:
    """Copy ``k`` of a ParlAI file with every utterance and persona sentence starting with the
    word ``copy<k>`` (``__SILENCE__`` kept): the copies' sentences are distinct, so the stages
    that encode each distinct sentence once (persona_labels, the matcher, score_groups) see
    k× the distinct texts, as a k× larger real corpus would, not the same texts again."""
    if k == 0:
        return text
    out = []
    for line in text.splitlines():
        m = _UTTERANCE.match(line)
        if m is None:
            out.append(line)
            continue
        number, persona, rest = m.group(1), m.group(2) or "", m.group(3)
        fields = rest.split("\t")
        for i in range(min(2, len(fields))):  # utterance and response; candidates as they are
            if fields[i].strip() != "__SILENCE__":
                fields[i] = f"copy{k} {fields[i]}"
        out.append(number + persona + "\t".join(fields))
    return "\n".join(out) + "\n"


def replicate_corpus(src: Path, dst: Path, factor: int) -> Path:
    """Concatenate ``factor`` copies of every ParlAI file (``marked_copy``: copy k's sentences
    start with ``copy<k>``; copy 0 is the file itself): each copy's dialogues get fresh ids
    because `prepare` numbers dialogues by position."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.txt")):
        text = f.read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        (dst / f.name).write_text("".join(marked_copy(text, k) for k in range(factor)), encoding="utf-8")
    return dst


# Linux starts a forked child's peak RSS at its parent's (kept across exec), so a stage
# started from this (large) process would report our RSS. A small trampoline process
# forks the stage instead and prints the stage's own peak RSS (KiB).
_TRAMPOLINE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], cwd: Path, env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _TRAMPOLINE, *cmd], cwd=cwd, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-2000:]}")
    return seconds, int(proc.stdout.split()[-1]) * 1024  # Linux reports kilobytes


def _merge(params: dict, overrides: dict) -> None:
    """Section by section, key by key (a top-level value that is not a section is replaced)."""
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section].update(values)
        else:
            params[section] = values


def scale_project(workdir: Path, raw: Path, factor: int, overrides: dict | None = None) -> Path:
    """A scratch copy of the project reading ``raw`` replicated ``factor`` times; ``overrides``
    (params sections) go into its params.yaml (the repository's is never touched)."""
    project = workdir / f"x{factor}"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    for pkg in ("pipeline", "stages"):
        shutil.copytree(ROOT / pkg, project / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    corpus = replicate_corpus(raw, workdir / f"corpus_x{factor}", factor)
    params["fetch"]["source"] = str(corpus)
    params["prepare"]["duplicates"] = "keep"  # the copies are duplicated dialogues on purpose
    if params["fetch"].get("idf"):  # relative to this checkout, not to the scratch project
        params["fetch"]["idf"] = str((ROOT / params["fetch"]["idf"]).resolve())
    _merge(params, overrides or {})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def _set_params(project: Path, overrides: dict) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    _merge(params, overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _stage(cmd: list[str], project: Path, env: dict) -> dict:
    seconds, rss = run_measured([sys.executable, "-m", *cmd], project, env)
    return {"seconds": round(seconds, 2), "peak_rss_bytes": rss}


def _per_step(short: dict, long: dict, steps: tuple[int, int]) -> tuple[float, str]:
    """Seconds per optimizer step from the two capped runs, and how: their difference, or,
    where noise exceeds the steps' cost (tiny corpora), the long run's wall over its steps
    (setup included: an upper bound)."""
    diff = (long["seconds"] - short["seconds"]) / (steps[1] - steps[0])
    if diff > 0:
        return diff, "difference"
    return long["seconds"] / steps[1], "upper bound (wall / steps)"


def _two_runs(cmd: list[str], project: Path, env: dict, steps: tuple[int, int], set_steps, clean) -> dict:
    """The stage capped at steps[0] then at steps[1] optimizer steps (``set_steps(n)`` writes the
    cap into params.yaml, ``clean()`` removes what a run left for the next to resume from)."""
    runs = []
    for n in steps:
        clean()
        set_steps(n)
        runs.append(_stage(cmd, project, env))
    s, how = _per_step(runs[0], runs[1], steps)
    return {**runs[1], "how": "max_steps", "steps_measured": list(steps), "short_run_seconds": runs[0]["seconds"],
            "seconds_per_step": round(s, 4), "seconds_per_step_from": how}


def _rm(*paths: Path):
    def clean():
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)
    return clean


def _note(entry: dict, what: str) -> dict:
    entry["note"] = what
    return entry


def measure_ranker(stage: str, project: Path, env: dict, params: dict, steps) -> dict:
    """msn or matcher: two capped runs; whole stage = the long run's fixed cost (setup and the
    evaluation on `msn.eval_examples` valid examples, as configured) + the configured steps
    (msn: its epochs; matcher: its epochs capped by its max_steps)."""
    p = params[stage]
    e = _two_runs([f"stages.{stage}"], project, env, steps,
                  lambda n: _set_params(project, {stage: {"max_steps": n}}), _rm(project / "checkpoints" / stage))
    if stage == "msn":  # one R10@k pass
        report = json.loads((project / "reports" / "msn.json").read_text())
        eval_s = max(report["total_seconds"] - report["train_seconds"], 0.0)
    else:  # the three rankers
        report = json.loads((project / "reports" / "matchers.json").read_text())
        eval_s = sum(report[k].get("eval_seconds", 0.0) for k in ("bm25", "minilm_zeroshot", "minilm_finetuned"))
    per_epoch = math.ceil(_rows(project / "data/prepared/train.parquet") / p["batch_size"])
    configured = p["epochs"] * per_epoch
    if stage == "matcher" and p.get("max_steps"):
        configured = min(configured, p["max_steps"])
    fixed = max(e["seconds"] - steps[1] * e["seconds_per_step"], 0.0)
    limit = params["msn"].get("eval_examples")
    e.update(steps_per_epoch=per_epoch, projected_epoch_seconds=round(per_epoch * e["seconds_per_step"], 1),
             epochs_configured=p["epochs"], configured_steps=configured, eval_seconds=round(eval_s, 2),
             eval_examples=limit, projected_stage_seconds=round(fixed + configured * e["seconds_per_step"], 1))
    return _note(e, f"{steps[1]} steps measured (s/step from {steps[0]} vs {steps[1]}); evaluated as configured "
                    f"(msn.eval_examples={limit}); projected: the configured {configured} steps")


def measure_mle(project: Path, env: dict, params: dict, run: str, steps) -> dict:
    from pipeline.train import train_params

    tp = train_params(params, run)
    e = _two_runs(["stages.train", run, "--seed", "1"], project, env, steps,
                  lambda n: _set_params(project, {"train": {"max_steps": n, "checkpoint_every": 10**6}}),
                  _rm(project / "checkpoints" / run, project / "dvclive" / run, project / "reports" / "training" / run))
    per_epoch = math.ceil(_rows(project / "data/prepared/train.parquet") / tp["batch_size"])
    epoch = per_epoch * e["seconds_per_step"]
    share = 1 + projection.VALIDATION_SHARE
    e.update(steps_per_epoch=per_epoch, projected_epoch_seconds=round(epoch, 1), epochs_configured=tp["epochs"],
             projected_configured_epochs_seconds=round(tp["epochs"] * epoch * share, 1))
    # the ×1 committed runs' epochs to convergence (reports/training), assumed at every factor
    records_exist = projection.committed_steps(run)
    if records_exist:
        records = [json.loads(p.read_text()) for k in (1, 2, 3)
                   if (p := ROOT / "reports" / "training" / run / f"seed{k}.json").exists()]
        epochs = float(np.mean([r["epochs"] for r in records]))
        e.update(converged_epochs_x1=epochs, projected_converged_seconds=round(epochs * epoch * share, 1))
    return _note(e, f"{steps[1]} steps measured (s/step from {steps[0]} vs {steps[1]}); projected: one epoch of "
                    f"{per_epoch} steps; x(1 + {projection.VALIDATION_SHARE}) validation for the epoch counts")


def _subset_groups(project: Path, sample_rows: int, seed: int = 1) -> dict:
    """data/groups with the pools emptied except for a seeded sample of ``sample_rows`` rows
    per split, from the whole pools kept in data/groups_whole (nested: a larger sample holds
    the smaller one)."""
    from pipeline.contrastive.groups import pool_jobs

    whole = project / "data" / "groups_whole"
    if not whole.exists():
        shutil.copytree(project / "data" / "groups", whole)
    kept = {}
    for split in ("train", "valid"):
        t = pq.read_table(whole / f"{split}.parquet")
        cands = t.column("candidate_rows").to_pylist()
        nonempty = np.flatnonzero([bool(c) for c in cands])
        order = np.random.default_rng([seed, len(cands)]).permutation(nonempty)
        pick = set(order[:sample_rows].tolist())
        cols = t.to_pydict()
        for name in ("candidate_rows", "bm25_scores", "is_top"):
            cols[name] = [v if i in pick else [] for i, v in enumerate(cols[name])]
        sub = pa.Table.from_pydict(cols, schema=t.schema)
        pq.write_table(sub, project / "data" / "groups" / f"{split}.parquet")
        kept[split] = {"rows": len(cands), "nonempty_rows": len(nonempty), "sample_rows": len(pick),
                       "whole": _units(pool_jobs(t, len(cands))[1]), "subset": _units(pool_jobs(sub, len(cands))[1]),
                       "picked": sorted(pick)}
    return kept


def _units(jobs: np.ndarray) -> dict:
    """What score_groups processes: candidate pairs, and the distinct contexts + responses a
    bi-encoder encodes."""
    texts = len(np.unique(jobs[:, 0])) + len(np.unique(jobs[:, 1])) if len(jobs) else 0
    return {"pairs": int(len(jobs) // 2), "texts": int(texts)}


def _group_pairs(project: Path, sub: dict | None = None) -> tuple[int, float]:
    """(pairs reference_scores scored, pairs it would score on the whole pools): on sampled
    pools (``sub``) the sampled rows' mean group size stands in for every non-empty row."""
    done = full = 0.0
    for split in ("train", "valid"):
        t = pq.read_table(project / "data" / "scored_groups" / f"{split}.parquet",
                          columns=["positive_context_rows", "negative_context_rows"])
        sizes = np.array([len(a) + len(b) for a, b in zip(*(c.to_pylist() for c in t.columns), strict=True)])
        done += sizes.sum()
        if sub is None:
            full += sizes.sum()
            continue
        picked = np.zeros(len(sizes), dtype=bool)
        picked[sub[split]["picked"]] = True
        mean_group = sizes[picked].mean() if picked.any() else 1.0
        rest = sizes[~picked].mean() if (~picked).any() else 1.0
        n, ne = sub[split]["rows"], sub[split]["nonempty_rows"]
        full += ne * mean_group + (n - ne) * rest
    return int(done), float(full)


def measure_decode(project: Path, env: dict, rows: int) -> dict:
    """stages.generate (seq2seq_history, params `generate`) on seeded samples of rows/2 and
    ``rows`` test rows; the whole split projected from the seconds per row between them."""
    runs = []
    for n in (max(rows // 2, 1), rows):
        data, done, total = _decode_data(project, n)
        runs.append((done, _stage(["stages.generate", "seq2seq_history", "--seed", "1", "--data", str(data)],
                                  project, env)))
    (n0, a), (n1, b) = runs
    per_row = (b["seconds"] - a["seconds"]) / max(n1 - n0, 1)
    if per_row > 0:
        projected, how = b["seconds"] + per_row * (total - n1), "difference"
    else:
        projected, how = b["seconds"] * total / n1, "upper bound (linear, setup included)"
    e = {**b, "how": "decode", "rows_decoded": n1, "smaller_sample": {"rows": n0, **a}, "test_rows": total,
         "seconds_per_row": round(max(per_row, 0.0), 5), "projected_full_seconds": round(projected, 1),
         "projected_from": how}
    return _note(e, f"{n1} seeded test rows decoded (and {n0}) with params `generate`; projected to all {total} "
                    f"test rows by the seconds per row between them")


def _decode_data(project: Path, rows: int, seed: int = 1) -> tuple[Path, int, int]:
    """data_decode/: a seeded sample of ``rows`` test rows (row order kept) beside the vocab."""
    src, dst = project / "data" / "prepared", project / "data_decode" / "prepared"
    dst.mkdir(parents=True, exist_ok=True)
    test = pq.read_table(src / "test.parquet")
    take = np.sort(np.random.default_rng(seed).choice(test.num_rows, min(rows, test.num_rows), replace=False))
    pq.write_table(test.take(pa.array(take)), dst / "test.parquet")
    shutil.copy2(src / "vocab.parquet", dst / "vocab.parquet")
    return project / "data_decode", len(take), test.num_rows


def bench_scale(raw: Path, factors: list[int], workdir: Path, stages=None, *, steps=(5, 35), full_up_to: int = 1,
                sample_rows: int = 300, decode_rows: int = 1000, overrides: dict | None = None, rates: dict | None = None) -> dict:
    """{stage: {"x<F>": entry}} for every stage of STAGES (``stages``: a subset; the
    preprocessing names alone reproduce the old benchmark) at every factor. Each entry has
    ``seconds`` and ``peak_rss_bytes`` of the (long) measured run, ``how`` it was measured, a
    ``note`` and ``cost_seconds``: the whole stage at that factor (measured, or projected for
    max_steps / subset / decode entries), what growth, totals and the DAG projection read.
    ``rates``: the scoring stages' seconds per unit from an earlier x1 run (`scoring_rates`);
    a factor up to ``full_up_to`` measures its own."""
    stages = tuple(STAGES if stages is None else stages)
    rates = dict(rates or {})
    env = dict(os.environ, PIPELINE_NO_PROGRESS="1", PYTHONPATH="")
    results: dict = {}
    for factor in factors:
        project = scale_project(workdir, raw, factor, overrides)
        params = yaml.safe_load((project / "params.yaml").read_text())
        key = f"x{factor}"

        def put(stage: str, entry: dict, *, _key=key, _factor=factor) -> None:
            entry.setdefault("how", "full")
            entry.setdefault("cost_seconds", entry.get("projected_stage_seconds", entry.get("projected_full_seconds",
                                                       entry.get("projected_epoch_seconds", entry["seconds"]))))
            results.setdefault(stage, {})[_key] = entry
            print(f"  scale x{_factor} {stage}: {entry['seconds']:.1f} s, {entry['peak_rss_bytes'] / 2**20:.0f} MiB "
                  f"({entry['how']}; whole stage {entry['cost_seconds']:.1f} s)", file=sys.stderr)

        for stage in PREPROCESSING:
            if stage in stages:
                put(stage, _stage([f"stages.{stage}"], project, env))
        for stage in ("msn", "matcher"):
            if stage in stages:
                put(stage, measure_ranker(stage, project, env, params, steps))
        if {"train@seq2seq_history", "reference_scores", "decode@seq2seq_history"} & set(stages):
            e = measure_mle(project, env, params, "seq2seq_history", steps)
            if "train@seq2seq_history" in stages:
                put("train@seq2seq_history", e)
        scoring = [s for s in ("score_groups", "select_groups", "reference_scores") if s in stages]
        if scoring:
            for stage, e in measure_scoring(project, env, params, scoring, sample_rows, full=factor <= full_up_to,
                                            rates=rates).items():
                put(stage, e)
        if "decode@seq2seq_history" in stages:
            put("decode@seq2seq_history", measure_decode(project, env, decode_rows))
        if "train@pednet" in stages:
            put("train@pednet", measure_mle(project, env, params, "pednet", steps))
        shutil.rmtree(project)
        shutil.rmtree(workdir / f"corpus_x{factor}")
    return {stage: results[stage] for stage in STAGES if stage in results}


_SCORING = {"score_groups": ["stages.score_groups"], "select_groups": ["stages.select_groups"],
            "reference_scores": ["stages.reference_scores", "seq2seq_history", "--seed", "1"]}
_UNITS = {"score_groups": "encoded texts", "select_groups": "candidate pairs", "reference_scores": "scored pairs"}


def _pool_units(project: Path, params: dict, sub: dict | None) -> tuple[dict, dict]:
    """({stage: units processed}, {stage: units of the whole pools}) for score_groups and
    select_groups, on the sampled pools ``sub`` or the whole ones."""
    from pipeline.contrastive.groups import pool_jobs

    unit = "texts" if params["score_groups"].get("scorer", "msn").startswith("minilm") else "pairs"
    if sub is not None:
        done = {"score_groups": sum(sub[s]["subset"][unit] for s in sub),
                "select_groups": sum(sub[s]["subset"]["pairs"] for s in sub)}
        whole = {"score_groups": sum(sub[s]["whole"][unit] for s in sub),
                 "select_groups": sum(sub[s]["whole"]["pairs"] for s in sub)}
        return done, whole
    units = [_units(pool_jobs(t, t.num_rows)[1])
             for t in (pq.read_table(project / "data" / "groups" / f"{s}.parquet") for s in ("train", "valid"))]
    done = {"score_groups": sum(u[unit] for u in units), "select_groups": sum(u["pairs"] for u in units)}
    return done, dict(done)


def _scoring_run(project: Path, env: dict, params: dict, scoring: list[str], sub: dict | None) -> dict:
    """score_groups -> select_groups -> reference_scores on the current data/groups: {stage:
    (measurement, units processed, units of the whole pools)}."""
    done, whole = _pool_units(project, params, sub)
    out = {}
    for stage in scoring:
        measured = _stage(_SCORING[stage], project, env)
        if stage == "reference_scores":
            done[stage], whole[stage] = _group_pairs(project, sub)
        out[stage] = (measured, done[stage], whole[stage])
    return out


def measure_scoring(project: Path, env: dict, params: dict, scoring: list[str], sample_rows: int, *, full: bool,
                    rates: dict) -> dict:
    """score_groups, select_groups and reference_scores. Their work is linear in units (texts
    the MiniLM scorer encodes, candidate pairs, scored pairs) on top of a fixed cost (setup,
    every row's own pair, per-row loops). ``full``: each runs whole, then once more on the
    pools of ``sample_rows`` seeded rows per split; the two give the seconds per unit
    (written to ``rates``). Otherwise only the sampled run; the whole stage = that run +
    the rate from ``rates`` (measured at x1) x the units it left out. (Two samples of one
    factor differ too little in units for a difference to beat the noise; measured.)"""
    whole_runs = _scoring_run(project, env, params, scoring, None) if full else {}
    sub = _subset_groups(project, sample_rows)
    sampled = _scoring_run(project, env, params, scoring, sub)
    out = {}
    for stage in scoring:
        small, d, w = sampled[stage]
        sample = {**small, "units": round(d), "sample_rows": [sub[s]["sample_rows"] for s in ("train", "valid")]}
        if full:
            big, _, w = whole_runs[stage]
            rates[stage] = max((big["seconds"] - small["seconds"]) / max(w - d, 1), 0.0)
            e = {**big, "how": "full", "units": _UNITS[stage], "units_whole": round(w), "sampled_run": sample,
                 "seconds_per_unit": round(rates[stage], 7)}
            out[stage] = _note(e, f"whole stage ({round(w)} {_UNITS[stage]}); seconds per unit from it and a run on "
                                  f"sampled pools ({round(d)} units)")
            continue
        if stage in rates:
            projected, how = small["seconds"] + rates[stage] * (w - d), "x1 seconds per unit"
        else:  # no x1 calibration: linear in the units, setup included (an upper bound)
            projected, how = small["seconds"] * w / max(d, 1), "upper bound (linear, setup included)"
        e = {**small, "how": "subset", "projected_full_seconds": round(projected, 1), "projected_from": how,
             "sample_rows": sample["sample_rows"], "units": _UNITS[stage], "units_measured": round(d),
             "units_whole": round(w), "seconds_per_unit": rates.get(stage)}
        out[stage] = _note(e, f"pools of {sample['sample_rows'][0]} train + {sample['sample_rows'][1]} valid seeded "
                              f"rows; whole stage = that run + {how} x the {round(w - d)} {_UNITS[stage]} left out")
    shutil.rmtree(project / "data" / "groups")
    shutil.copytree(project / "data" / "groups_whole", project / "data" / "groups")
    return out


def scoring_rates(per_stage: dict) -> dict:
    """The scoring stages' seconds per unit from the entries of a whole (x1) run."""
    return {s: e["seconds_per_unit"] for s in _SCORING for e in per_stage.get(s, {}).values()
            if e.get("how") == "full" and e.get("seconds_per_unit") is not None}


def meta(factors: list[int], steps, full_up_to: int, sample_rows: int, decode_rows: int) -> dict:
    return {"cpu": stage_times.cpu_model(), "factors": [f"x{f}" for f in factors], "steps": list(steps),
            "full_up_to": full_up_to, "sample_rows": sample_rows, "decode_rows": decode_rows,
            "date": time.strftime("%Y-%m-%d")}


def _cost(entry: dict) -> float:
    return entry.get("cost_seconds", entry["seconds"])


def stage_cost(per_stage: dict, stage: str, f: str) -> float:
    """The whole stage at factor ``f``. A training stage's steps at the seconds per step pooled
    over the factors (``pooled_step``): msn / matcher their fixed cost (setup, the configured
    evaluation) + the configured steps, an MLE run one epoch; any other stage as measured or
    projected (``cost_seconds``)."""
    e = per_stage[stage][f]
    pooled = pooled_step(per_stage, stage) if "seconds_per_step" in e else None
    if pooled is None:
        return _cost(e)
    if "configured_steps" in e:
        fixed = max(e["seconds"] - e["steps_measured"][1] * e["seconds_per_step"], 0.0)
        return fixed + e["configured_steps"] * pooled
    return e["steps_per_epoch"] * pooled


def growth(per_stage: dict, factors: list[int]) -> dict:
    """Cost at the largest factor relative to linear growth from the smallest (the old measure)."""
    lo, hi = f"x{min(factors)}", f"x{max(factors)}"
    ratio = max(factors) / min(factors)
    out = {}
    for stage, runs in per_stage.items():
        if lo in runs and hi in runs and stage_cost(per_stage, stage, lo) > 0:
            out[stage] = round(stage_cost(per_stage, stage, hi) / (stage_cost(per_stage, stage, lo) * ratio), 2)
    return out


def growth_exponent(per_stage: dict) -> dict:
    """Log-log slope of each stage's whole-stage cost between its two largest factors:
    ≈1 linear, ≈2 quadratic in the corpus."""
    out = {}
    for stage, runs in per_stage.items():
        fs = sorted((int(f[1:]) for f in runs), reverse=True)[:2]
        if len(fs) == 2 and fs[0] != fs[1]:
            a, b = stage_cost(per_stage, stage, f"x{fs[1]}"), stage_cost(per_stage, stage, f"x{fs[0]}")
            if a > 0 and b > 0:
                out[stage] = round(math.log(b / a) / math.log(fs[0] / fs[1]), 2)
    return out


def totals(per_stage: dict, previous: dict | None = None) -> dict:
    """Per factor: fetch -> groups (measured), everything before training (whole-stage costs)
    and the largest peak RSS, against GOAL; and the full-corpus `make repro` projected by
    benchmarks.projection.dag_minutes from this factor's numbers."""
    factors = sorted({f for runs in per_stage.values() for f in runs}, key=lambda f: int(f[1:]))
    out = {}
    for f in factors:
        n = int(f[1:])
        pre = [per_stage[s][f] for s in PREPROCESSING if f in per_stage.get(s, {})]
        before = [s for s in BEFORE_TRAINING if f in per_stage.get(s, {})]
        rss = max((e["peak_rss_bytes"] for e in pre), default=0) / 1e9
        row = {"fetch_to_groups_seconds": round(sum(e["seconds"] for e in pre), 1),
               "fetch_to_groups_peak_rss_gb": round(rss, 2),
               "before_training_seconds": round(sum(stage_cost(per_stage, s, f) for s in before), 1),
               "before_training_peak_rss_gb": round(max((per_stage[s][f]["peak_rss_bytes"] for s in before),
                                                        default=0) / 1e9, 2)}
        if n == GOAL["factor"]:
            ok = row["fetch_to_groups_seconds"] <= 60 * GOAL["minutes"] and rss <= GOAL["peak_rss_gb"]
            whole_ok = (row["before_training_seconds"] <= 60 * GOAL["minutes"]
                        and row["before_training_peak_rss_gb"] <= GOAL["peak_rss_gb"])
            largest = sorted(((stage_cost(per_stage, s, f), s) for s in before), reverse=True)[:3]
            row["goal"] = (f"fetch -> groups <= {GOAL['minutes']} min and <= {GOAL['peak_rss_gb']} GB: "
                           f"{'met' if ok else 'NOT met'}; everything before MLE training (with the MSN and matcher "
                           f"fine-tunes and score_groups): {'met' if whole_ok else 'NOT met'} "
                           f"({row['before_training_seconds'] / 60:.1f} min; largest: "
                           + ", ".join(f"{s} {c / 60:.1f} min" for c, s in largest) + ")")
        row["projected_repro"] = project_repro(per_stage, f, previous or {})
        out[f] = row
    return out


def pooled_step(per_stage: dict, stage: str) -> float | None:
    """A training stage's seconds per step, the mean over every factor measured. A step's
    cost does not depend on the corpus size (the same batch size, the same words), but one
    30-step window of length-bucketed batches does on which lengths it drew (±30% between
    factors, measured), so the factors are pooled."""
    values = [e["seconds_per_step"] for e in per_stage.get(stage, {}).values()
              if e.get("seconds_per_step_from") == "difference"]
    return round(float(np.mean(values)), 4) if values else None


def project_repro(per_stage: dict, f: str, previous: dict) -> dict:
    """The committed 3-seed DAG at factor ``f``: every MLE run takes its committed ×1 steps x
    the factor (the same epochs to converge), at the seconds per step measured here
    (seq2seq_history, pednet: pooled over the factors, ``pooled_step``) or measured at ×1
    by `--only projection` (the other runs: a step's cost does not grow with the corpus); preprocessing and reference_scores /
    generate from this factor's whole-stage costs; train_gcl (capped by max_steps) and
    evaluate (linear in test rows) from the ×1 stage records."""
    n = int(f[1:])
    known = previous.get("details", {}).get("projection", {}).get("mle_runs", {})
    runs, missing = {}, []
    for run in projection.MLE_RUNS:
        steps = [s * n for s in projection.committed_steps(run)]
        key = f"train@{run}"
        per_step = pooled_step(per_stage, key) or known.get(run, {}).get("seconds_per_step")
        if steps and per_step:
            runs[run] = {"seconds_per_step": per_step, "committed_steps": steps}
        else:
            missing.append(run)
    pre = sum(stage_cost(per_stage, s, f) for s in projection.PREPROCESSING if f in per_stage.get(s, {}))
    others = {}
    if f in per_stage.get("reference_scores", {}):
        others["reference_scores@seq2seq_history-1"] = stage_cost(per_stage, "reference_scores", f)
    if f in per_stage.get("decode@seq2seq_history", {}):
        others["generate@seq2seq_history-1"] = stage_cost(per_stage, "decode@seq2seq_history", f)
    records_path = ROOT / "reports" / "stage_times.json"
    records = json.loads(records_path.read_text())["stages"] if records_path.exists() else {}
    for stage, scale in (("train_gcl@seq2seq_history-1", 1), ("evaluate@seq2seq_history-1", n)):
        if stage in records:
            others[stage] = records[stage]["wall_seconds"] * scale
    dag = projection.dag_minutes(runs, pre, others)
    dag["minutes_by_run"] = {r: v["minutes"] for r, v in dag.pop("mle_runs").items()}
    dag["not_projected"] = missing
    return dag


def render(results: dict) -> list[str]:
    """The markdown section: stages x factors (seconds / peak MiB), growth, totals."""
    scale = results["scale"]
    factors = sorted({f for runs in scale.values() for f in runs}, key=lambda f: int(f[1:]))
    m = results.get("scale_meta", {})
    exponent = results.get("scale_growth_exponent") or growth_exponent(scale)
    lines = ["", "## Scale: every stage up to reference_scores on the corpus replicated N times", ""]
    if results.get("scale_caveats"):  # what a reader must know before trusting a cell (written by hand)
        lines += ["**Caveats.** " + " ".join(results["scale_caveats"]), ""]
    if m:
        lines += [f"Measured on {m['cpu']} ({m.get('date', '')}). Training stages: {m['steps'][1]} optimizer steps "
                  f"(seconds per step from {m['steps'][0]} vs {m['steps'][1]} steps, pooled over the factors); "
                  f"[whole]: msn / matcher as configured, an MLE run one epoch; "
                  f"score_groups / select_groups / reference_scores above x{m['full_up_to']}: the pools of "
                  f"{m['sample_rows']} seeded rows per split, projected linearly; decoding: {m['decode_rows']} "
                  f"seeded test rows, projected to the test split. Cells: measured seconds / peak RSS MiB "
                  f"[whole stage, projected]. Growth: log-log slope of the whole-stage cost between the two largest "
                  f"factors (1 linear, 2 quadratic).", ""]
    lines += ["| stage | " + " | ".join(f"{f} s / MiB [whole s]" for f in factors) + " | growth |",
              "|---|" + "---|" * (len(factors) + 1)]
    for stage, runs in sorted(scale.items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES)):
        cells = []
        for f in factors:
            e = runs.get(f)
            if e is None:
                cells.append("-")
                continue
            cell = f"{e['seconds']:.1f} / {e['peak_rss_bytes'] / 2**20:.0f}"
            if e.get("how", "full") != "full":
                cell += f" [{stage_cost(scale, stage, f):.0f}, {e['how']}]"
            cells.append(cell)
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {exponent.get(stage, '-')} |")
    training = [(s, f, runs[f]) for s, runs in scale.items() for f in factors
                if f in runs and "seconds_per_step" in runs[f]]
    if training:
        lines += ["", "| training stage | factor | s/step (measured) | s/step (pooled) | one epoch (pooled) | "
                  "configured (pooled) | converged epochs of x1 (pooled) |", "|---|---|---|---|---|---|---|"]
        for s, f, e in training:
            pooled = pooled_step(scale, s) or e["seconds_per_step"]
            epoch = e["steps_per_epoch"] * pooled
            if "projected_configured_epochs_seconds" in e:  # an MLE run: its epochs + validation
                share = 1 + projection.VALIDATION_SHARE
                conf = f"{e['epochs_configured'] * epoch * share:.0f} s"
                conv = f"{e['converged_epochs_x1'] * epoch * share:.0f} s" if "converged_epochs_x1" in e else "-"
            else:  # msn / matcher: the long run's fixed cost + the configured steps
                conf, conv = f"{stage_cost(scale, s, f):.0f} s", "-"
            lines.append(f"| {s} | {f} | {e['seconds_per_step']:.3f} | {pooled:.3f} | {epoch:.0f} s "
                         f"({e['steps_per_epoch']} steps) | {conf} | {conv} |")
    tot = results.get("scale_totals", {})
    if tot:
        lines += ["", "| factor | fetch -> groups (measured) | peak RSS | before training (fetch -> select_groups, "
                  "whole stages) | peak RSS | projected 3-seed make repro |", "|---|---|---|---|---|---|"]
        tot = dict(sorted(tot.items(), key=lambda kv: int(kv[0][1:])))  # JSON sorts x18 before x3
        for f, t in tot.items():
            repro = t.get("projected_repro", {})
            lines.append(f"| {f} | {t['fetch_to_groups_seconds'] / 60:.1f} min | {t['fetch_to_groups_peak_rss_gb']} GB | "
                         f"{t['before_training_seconds'] / 60:.1f} min | {t['before_training_peak_rss_gb']} GB | "
                         f"{repro.get('total_minutes', '-')} min |")
        for f, t in tot.items():
            if "goal" in t:
                lines += ["", f"Goal at {f} (about the full Persona-Chat): {t['goal']}."]
        lines += ["", "The projected repro (benchmarks.projection.dag_minutes): committed x1 training steps x the "
                  "factor at the measured seconds per step, one validation share per epoch, the stages above at their "
                  "whole-stage cost times their instances in the DAG; train_gcl is capped by max_steps and kept at its "
                  "x1 record."]
    return lines
