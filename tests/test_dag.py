"""reports/dag.md (pipeline/evaluation/dag.py): the pipeline at a glance, one node per dvc.yaml stage."""

from __future__ import annotations

import re

import networkx as nx
import pytest
import yaml

from pipeline.evaluation import dag

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # DVC's internals, not ours

STAGES = list(yaml.safe_load((dag.ROOT / "dvc.yaml").read_text())["stages"])


def test_dag_md_is_current_and_lists_every_stage():
    text = (dag.ROOT / dag.OUT).read_text(encoding="utf-8")
    assert text == dag.render(dag.ROOT), "reports/dag.md is stale: run `python -m pipeline.evaluation.dag`"
    mermaid = text.split("```mermaid\n")[1].split("```")[0]
    nodes = re.findall(r'^    (\w+)\["', mermaid, flags=re.M)
    rows = re.findall(r"^\| `(\w+)` \|", text, flags=re.M)
    assert sorted(nodes) == sorted(rows) == sorted(STAGES)
    assert '    train["train per model × seed"]' in mermaid
    edges = set(re.findall(r"^    (\w+) --> (\w+)$", mermaid, flags=re.M))
    assert ("fetch", "prepare") in edges and ("evaluate", "report") in edges
    assert ("prepare", "report") not in edges  # implied by a longer path: not drawn...
    assert "| `train_gcl` | reference × seed | " in text  # ...but every direct one is in the table
    assert max(map(len, text.splitlines())) < 240  # the longest: report's row, one name per stage it reads


def test_matrix_instances_collapse_to_their_stage():
    g = nx.DiGraph([("fetch", "train@a-1"), ("fetch", "train@a-2"), ("train@a-1", "generate@a-1"),
                    ("train@a-2", "generate@a-2"), ("train@a-1", "train@b-1")])
    c = dag.collapse(g)
    assert set(c.nodes) == {"fetch", "train", "generate"}
    assert set(c.edges) == {("fetch", "train"), ("train", "generate")}  # no train -> train loop


def test_order_runs_each_stage_after_what_it_reads():
    graph = dag.collapse(dag.stage_graph())
    order = dag.order(graph, STAGES)
    assert order[:2] == ["check_params", "fetch"] and order[-1] == "report"
    position = {n: i for i, n in enumerate(order)}
    assert all(position[a] < position[b] for a, b in graph.edges)
