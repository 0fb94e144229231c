"""Test order for ``make test``'s two workers (pytest-xdist, ``--dist loadfile
--no-loadscope-reorder``: each file's tests on one worker, its module fixtures built once, the
files handed out in this order): the whole-DAG test goes to the first worker at once, the
other worker starts the next-longest file. xdist gives each worker a second file up front
while its first has at most 2 tests, so a short file comes third (it waits behind the DAG
test), not a long one."""

from __future__ import annotations

LONGEST_FIRST = ("test_full_dag.py", "test_dvc_pipeline.py", "test_io.py", "test_sweeps.py", "test_determinism.py",
                 "test_chat.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
