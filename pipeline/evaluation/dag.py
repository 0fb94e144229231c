"""The pipeline's architecture at a glance: ``reports/dag.md``.

    python -m pipeline.evaluation.dag            # rewrites reports/dag.md
    python -m pipeline.evaluation.dag --stdout   # prints it instead

``dvc dag`` draws every stage instance (train@seq2seq-1, train@seq2seq-2, ...: over a
hundred with three seeds), in lines two thousand columns wide. Here each matrix / foreach
definition of dvc.yaml is one node, named by what it runs over (``train`` per model × seed),
so the graph has one node per dvc.yaml stage and does not change with ``seeds``. The
dependencies are DVC's own (``Repo.index.graph``: an output of one stage that another
depends on), collapsed the same way. Two views:

- a mermaid flowchart (rendered by GitHub and most Markdown viewers), drawn without the
  edges a longer path already implies (prepare feeds nearly every stage; the drawing shows
  it feeding the first ones);
- a table with every direct dependency, in an order that runs (each stage after what it
  reads), readable in a terminal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import networkx as nx
import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = Path("reports/dag.md")
JOIN = "@"  # DVC's separator of a matrix / foreach stage's name and its item


def stage_graph(root: Path = ROOT) -> nx.DiGraph:
    """Every stage instance of root/dvc.yaml, an edge from each stage to those that read its outputs."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = nx.DiGraph()
        for stage in repo.index.graph.nodes:
            graph.add_node(stage.addressing)
        for dependent, dependency in repo.index.graph.edges:
            graph.add_edge(dependency.addressing, dependent.addressing)
    return graph


def collapse(graph: nx.DiGraph) -> nx.DiGraph:
    """One node per dvc.yaml stage definition: ``train@pednet-1`` -> ``train``."""
    out = nx.DiGraph()
    out.add_nodes_from(n.split(JOIN)[0] for n in graph.nodes)
    out.add_edges_from((a.split(JOIN)[0], b.split(JOIN)[0]) for a, b in graph.edges
                       if a.split(JOIN)[0] != b.split(JOIN)[0])
    return out


def axes(root: Path = ROOT) -> dict[str, str]:
    """What each matrix / foreach stage runs over, from dvc.yaml: ``{"train": "model × seed"}``."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        if "matrix" in stage:
            out[name] = " × ".join(stage["matrix"])
        elif "foreach" in stage:
            items = stage["foreach"]
            out[name] = ", ".join(map(str, items)) if isinstance(items, list) else str(items)
    return out


def order(graph: nx.DiGraph, stages: list[str]) -> list[str]:
    """A topological order, ties broken by dvc.yaml's order of definition."""
    rank = {name: i for i, name in enumerate(stages)}
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: rank.get(n, len(rank))))


def render(root: Path = ROOT) -> str:
    graph = collapse(stage_graph(root))
    over = axes(root)
    defined = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    nodes = order(graph, defined)
    drawn = nx.transitive_reduction(graph)

    def label(name: str) -> str:
        return f"{name} per {over[name]}" if name in over else name

    lines = [
        "# The pipeline",
        "",
        "Generated from `dvc.yaml` by `python -m pipeline.evaluation.dag` (rerun it after changing the stages;",
        "`tests/test_dag.py` checks this file is current). One node per stage of `dvc.yaml`: a",
        "matrix or foreach stage (e.g. `train`, one DVC stage `train@<model>-<seed>` per model and",
        "seed of `params.yaml`'s `seeds`) is one node, named by what it runs over. An arrow runs",
        "from a stage to one that reads its outputs; arrows a longer path already implies are",
        "left out of the drawing, and listed in the table below.",
        "",
        "```mermaid",
        "flowchart TD",
    ]
    lines += [f'    {n}["{label(n)}"]' for n in nodes]
    lines += [f"    {a} --> {b}" for a in nodes for b in nodes if drawn.has_edge(a, b)]
    lines += [
        "```",
        "",
        "Every direct dependency, in an order that runs:",
        "",
        "| stage | one DVC stage per | reads the outputs of |",
        "|---|---|---|",
    ]
    for n in nodes:
        upstream = [f"`{u}`" for u in nodes if graph.has_edge(u, n)]
        lines.append(f"| `{n}` | {over.get(n, '')} | {', '.join(upstream) or '(inputs outside the pipeline)'} |")
    lines += [
        "",
        "In a terminal: `python -m pipeline.evaluation.dag --stdout` prints this file. DVC's own views:",
        "`dvc dag --collapse-foreach-matrix --md` (this graph with every edge), `dvc dag --md`",
        "(every stage instance), `dvc dag evaluate@pednet-1` (what one instance depends on).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.dag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stdout", action="store_true", help=f"print instead of writing {OUT}")
    args = parser.parse_args(argv)
    text = render(ROOT)
    if args.stdout:
        sys.stdout.write(text)
    else:
        (ROOT / OUT).write_text(text, encoding="utf-8")
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
