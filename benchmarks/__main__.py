"""`python -m benchmarks`: measure this project against its slow baselines, side by side.

Writes reports/benchmarks.md (a table of ratios) and reports/benchmarks.json. Needs the
preprocessing outputs in data/ (run `dvc repro` first) and the raw slice for the scale runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import measures, projection, scale, speed
from benchmarks.scale import PREPROCESSING, bench_scale, growth
from pipeline import stage_times

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {
    "reference_scores_speedup": ">= 4x",
    "generate_speedup": ">= 3x",
    "gcl_run_vs_mle_run_wall": "<= 1.5",
    "one_seed_repro_minutes": "<= 60",
    "full_repro_peak_rss_gb": "<= 8",
    "test_suite_seconds": "<= 480",
    "bm25_speedup": ">= 100x",
    "labelling_speedup": ">= 20x",
    "train_speedup_vs_fp32": ">= 2.5",
    "train_fraction_of_bf16_peak": ">= 0.20",
    "bf16_vs_fp32_val_nll_rel_diff": "<= 0.01",
    "full_repro_minutes": "<= 150",
    "gcl_vs_mle_throughput": ">= 0.9",
    "noop_repro_seconds": "<= 5 s",
}


def noop_repro_seconds() -> float:
    """A second `dvc repro` of the preprocessing DAG: in this repo if it is up to date,
    otherwise in a scratch copy built first."""
    dvc = str(Path(sys.executable).parent / "dvc")
    env = dict(os.environ, PIPELINE_NO_PROGRESS="1")
    status = subprocess.run([dvc, "status", "--quiet", *PREPROCESSING], cwd=ROOT, env=env, capture_output=True)
    cwd = ROOT
    if status.returncode != 0:
        from tests.dvc_project import make_project  # the tests' scratch-project builder

        cwd = make_project(Path(tempfile.mkdtemp(prefix="noop-")))
        subprocess.run([dvc, "repro", *PREPROCESSING], cwd=cwd, env=env, check=True, capture_output=True)
    start = time.perf_counter()
    out = subprocess.run([dvc, "repro", *PREPROCESSING], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if "Running stage" in out.stdout:
        raise RuntimeError(f"the second dvc repro was not a no-op:\n{out.stdout}")
    return round(seconds, 2)


def full_repro(seeds: list[int] | None = None) -> dict:
    """The README's `make repro` (`dvc exp run`) of the committed pipeline from scratch: a
    fresh clone of HEAD, no DVC cache, the shared data beside it as in CI. ``seeds``: the
    one-seed run (`-S 'seeds=[1]'`). Wall minutes, the peak RSS of the largest stage process,
    the commit and the CPU; the clone's stage time records go to reports/stage_times_<n>seed.json."""
    import resource

    from pipeline.staleness import head_commit

    key = "full_repro" if seeds is None else "one_seed_repro"
    with tempfile.TemporaryDirectory(prefix="repro-", dir=ROOT.parent) as tmp:
        clone = Path(tmp) / ROOT.name  # beside ROOT, so that ../shared resolves as in CI
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        (clone / ".venv").symlink_to(Path(sys.executable).parents[1])
        env = dict(os.environ, PIPELINE_NO_PROGRESS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        cmd = [str(Path(sys.executable).parent / "dvc"), "exp", "run"]
        if seeds is not None:
            cmd += ["-S", f"seeds={json.dumps(seeds)}"]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=clone, env=env, check=True)
        minutes = (time.perf_counter() - start) / 60
        records = stage_times.collect(clone / ".dvc" / "tmp" / "stage_times")
        (ROOT / "reports" / f"stage_times_{key}.json").write_text(json.dumps(records, indent=1) + "\n")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child process
    return {f"{key}_minutes": round(minutes, 1), f"{key}_peak_rss_gb": round(peak / 1e9, 2),
            f"{key}_commit": head_commit(ROOT), f"{key}_cpu": stage_times.cpu_model(),
            f"{key}_stage_times": records["by_kind"]}


def measured_on() -> str:
    """The CPU (and its kernel level), the torch threads and the day: beside every measure."""
    return (f"{stage_times.cpu_model()} ({measures.torch.backends.cpu.get_cpu_capability()}), "
            f"{os.cpu_count()} cores, torch threads {measures.torch_threads()}, {time.strftime('%Y-%m-%d')}")


def render(results: dict) -> str:
    rows = [
        ("MLE training step, multi-turn Seq2Seq: padded vs packed encoder GRU", "encoder_step_speedup_history", "x"),
        ("MLE training step, multi-turn Seq2Seq: readout on every position vs on real tokens", "readout_step_speedup_history", "x"),
        ("dvc status of this repository: ruamel's pure-Python vs C YAML loader", "dvc_status_c_loader_speedup", "x"),
        ("reference_scores pass: shared contexts, precision auto vs per-pair bf16", "reference_scores_speedup", "x"),
        ("generate stage work (decode + query_gain): precision auto vs bf16", "generate_speedup", "x"),
        ("GCL validation: every valid group vs the gcl.valid_examples subset", "gcl_validation_speedup", "x"),
        ("two 1-thread processes vs one 2-thread process (MLE steps, 2 jobs)", "two_processes_vs_one_speedup", "x"),
        ("GCL fine-tune wall / its reference's MLE run wall (stage times)", "gcl_run_vs_mle_run_wall", ""),
        ("one-seed dvc repro from scratch (minutes)", "one_seed_repro_minutes", ""),
        ("full 3-seed DAG on this CPU, projected from stage times and step costs (minutes)",
         "projected_full_repro_minutes", ""),
        ("make test (seconds, fresh clone)", "test_suite_seconds", ""),
        ("BM25 candidate pools vs rank_bm25 get_scores loop", "bm25_speedup", "x"),
        ("  top-10 agreement with rank_bm25", "bm25_top10_agreement", ""),
        ("persona labelling vs one encoder call per sentence", "labelling_speedup", "x"),
        ("  label agreement", "labelling_agreement", ""),
        ("PEDNet training step, bf16 vs fp32 target tokens/s", "train_speedup_vs_fp32", "x"),
        ("PEDNet training step (bf16), fraction of the bf16 matmul peak", "train_fraction_of_bf16_peak", ""),
        ("  bf16 matmul peak, GFLOP/s", "bf16_matmul_peak_gflops", ""),
        ("  fp32 matmul peak, GFLOP/s", "fp32_matmul_peak_gflops", ""),
        ("best validation NLL, bf16 vs fp32 run (relative difference)", "bf16_vs_fp32_val_nll_rel_diff", ""),
        ("full dvc repro from scratch (minutes)", "full_repro_minutes", ""),
        ("  peak RSS of that repro (GB)", "full_repro_peak_rss_gb", ""),
        ("  peak RSS of the one-seed repro (GB)", "one_seed_repro_peak_rss_gb", ""),
        ("contrastive / MLE target-token throughput", "gcl_vs_mle_throughput", ""),
        ("no-op dvc repro (seconds)", "noop_repro_seconds", ""),
        ("groups: queries whose exact top-k MaxScore pruning could certify", "groups_pruning_certified_share", ""),
        ("congeneric: the same", "congeneric_pruning_certified_share", ""),
    ]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python -m benchmarks` on {results['machine']}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
    ]
    for label, key, unit in rows:
        value = results.get(key)
        shown = "not measured" if value is None else f"{value:g}{unit}"
        lines.append(f"| {label} | {shown} | {TARGETS.get(key, '')} |")
    if results.get("stage_times"):
        lines += ["", "## Where the time goes: stage wall times by kind", "",
                  "Collected by `python -m benchmarks --only stage_times` from the records every stage writes "
                  "when it runs (reports/stage_times.json has each instance).", "",
                  *stage_times.render(results["stage_times"])]
    if results.get("measured_on"):
        lines += ["", "## Where each measure was taken", "",
                  "Measures of earlier runs keep their machine; a measure without an entry predates this record.", "",
                  *(f"- `{name}`: {where}" for name, where in sorted(results["measured_on"].items()))]
    lines += ["", "## Details", "", "```json", json.dumps(results.get("details", {}), indent=2), "```"]
    if results.get("scale"):
        lines += scale.render(results)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--raw", default="data/raw", help="ParlAI files to replicate for the scale runs")
    ap.add_argument("--scales", default="1,3,9,18", help="replication factors, e.g. 1,3 ('' skips)")
    ap.add_argument("--scale-stages", default="",
                    help="scale: only these stages, e.g. fetch,prepare,embeddings,pmi,persona_labels,congeneric,groups")
    ap.add_argument("--scale-keep", default="",
                    help="scale: factors whose entries of the last run are kept (a resumed run), e.g. 1")
    ap.add_argument("--scale-steps", default="5,35",
                    help="scale: the two max_steps caps of every training stage (seconds per step from their difference)")
    ap.add_argument("--scale-full-up-to", type=int, default=1,
                    help="scale: score_groups/select_groups/reference_scores run whole up to this factor, on a seeded "
                         "sample of pools above it")
    ap.add_argument("--scale-sample-rows", type=int, default=300, help="scale: sampled pools per split above it")
    ap.add_argument("--scale-decode-rows", type=int, default=1000, help="scale: test rows decoded")
    ap.add_argument("--sample", type=int, default=400, help="queries/examples timed on the slow paths")
    ap.add_argument("--only", default="",
                    help="comma-separated subset: stage_times,encoder,readout,scoring,decoding,mmi_sampling,gcl_validation,threads,projection,bm25,labelling,"
                         "train,parity,gcl,pruning,dvc_yaml,noop,scale,one_seed_repro,full_repro "
                         "(one_seed_repro and full_repro only when named: they run the pipeline in a scratch clone)")
    ap.add_argument("--out", default="reports/benchmarks")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    want = (lambda name: not only or name in only)  # noqa: E731
    os.chdir(ROOT)

    out = Path(args.out)
    # A partial run (--only) keeps the other measures of the previous run.
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results: dict = {**previous, "machine": measured_on(),
                     "details": dict(previous.get("details", {}))}
    if want("stage_times"):
        collected = stage_times.collect()
        if collected["stages"]:
            Path("reports").mkdir(exist_ok=True)
            Path("reports/stage_times.json").write_text(json.dumps(collected, indent=1) + "\n")
            results["stage_times"] = {"by_kind": collected["by_kind"],
                                      "stages": {k: {"cpu": v.get("cpu")} for k, v in collected["stages"].items()}}
            results.update(stage_times.ratios(collected))
            cpus = sorted({r.get("cpu") for r in collected["stages"].values() if r.get("cpu")})
            results.setdefault("measured_on", {})["stage_times"] = f"stage records of {', '.join(cpus)}"
        else:
            print(f"[benchmarks] stage_times: no records in {stage_times.records_dir()}", file=sys.stderr)
    steps = [
        ("encoder", speed.encoder),
        ("readout", speed.readout),
        ("scoring", speed.scoring),
        ("decoding", speed.decoding),
        ("mmi_sampling", speed.mmi_sampling),
        ("gcl_validation", speed.gcl_validation),
        ("threads", speed.threads),
        ("projection", projection.projection),
        ("bm25", lambda: measures.bm25(args.sample)),
        ("labelling", lambda: measures.labelling(args.sample)),
        ("train", measures.training),
        ("parity", measures.precision_parity),
        ("gcl", measures.gcl_vs_mle),
        ("pruning", measures.pruning),
        ("dvc_yaml", measures.dvc_yaml),
    ]
    for name, fn in steps:
        if want(name):
            print(f"[benchmarks] {name} ...", file=sys.stderr)
            headline, details = fn()
            results.update(headline)
            results["details"][name] = details
            results.setdefault("measured_on", {})[name] = measured_on()
            print(f"[benchmarks] {name}: {json.dumps(headline)} {json.dumps(details)}", file=sys.stderr)
            save(out, results)  # a later step's failure keeps this one
    if want("noop"):
        print("[benchmarks] noop ...", file=sys.stderr)
        results["noop_repro_seconds"] = noop_repro_seconds()
    factors = [int(f) for f in args.scales.split(",") if f]
    if want("scale") and factors:
        print(f"[benchmarks] scale {factors} ...", file=sys.stderr)
        steps = tuple(int(x) for x in args.scale_steps.split(","))
        knobs = {"steps": steps, "full_up_to": args.scale_full_up_to, "sample_rows": args.scale_sample_rows,
                 "decode_rows": args.scale_decode_rows}
        keep = {f"x{f}" for f in args.scale_keep.split(",") if f}  # resumed: those factors as measured before
        results["scale"] = {stage: {k: v for k, v in runs.items() if k in keep}
                            for stage, runs in (previous.get("scale") or {}).items()}
        done = sorted(int(k[1:]) for k in keep)
        for i, factor in enumerate(factors):  # saved after each factor: a stopped run keeps what it measured
            with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
                only_stages = [x for x in args.scale_stages.split(",") if x] or None
                for stage, entries in bench_scale(Path(args.raw).resolve(), [factor], Path(tmp), only_stages,
                                                  rates=scale.scoring_rates(results["scale"]), **knobs).items():
                    results["scale"].setdefault(stage, {}).update(entries)
            record_scale(results, sorted({*done, *factors[: i + 1]}), knobs, previous)
            results.setdefault("measured_on", {})["scale"] = measured_on()
            save(out, results)

    if "one_seed_repro" in only:
        print("[benchmarks] one_seed_repro (the one-seed pipeline in a scratch clone) ...", file=sys.stderr)
        results.update(full_repro(seeds=[1]))
    if "full_repro" in only:
        print("[benchmarks] full_repro (the whole pipeline in a scratch clone) ...", file=sys.stderr)
        results.update(full_repro())
    print(save(out, results))


def record_scale(results: dict, factors: list[int], knobs: dict, previous: dict) -> None:
    """The scale entries beside results["scale"]: the old growth ratio, the log-log exponent,
    how it was measured and the totals (with the projected repro of each factor)."""
    results["scale_growth"] = growth(results["scale"], factors)
    results["scale_growth_exponent"] = scale.growth_exponent(results["scale"])
    results["scale_meta"] = scale.meta(factors, **knobs)
    results["scale_totals"] = scale.totals(results["scale"], previous)


def save(out: Path, results: dict) -> str:
    """reports/benchmarks.{json,md}; returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    table = render(results)
    out.with_suffix(".md").write_text(table)
    return table


if __name__ == "__main__":
    main()
