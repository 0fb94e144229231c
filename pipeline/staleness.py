"""Which stages are stale: recorded in ``dvc.lock`` with other code, data or params than the
working tree has.

    python -m pipeline.staleness            # one line per stale stage, and what changed
    python -m pipeline.staleness --check    # the same, exit code 1 when any is stale

``dvc status`` mixes two things: a stage whose deps or params changed (its outputs no longer
follow from the tree: stale) and a stage whose outputs are merely absent here (a clone
without the cache: ``dvc pull`` or ``dvc repro`` brings them back unchanged). Only the first
counts here; a dep that is absent (an upstream output not pulled) is not a change.

Read-only, so it takes no repository lock: the report stage calls it while ``dvc repro``
holds one, to print the count at the top of reports/results.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CHANGED = ("modified", "new")  # a dep state that means the recorded hash is not the tree's


def stale_stages(root: str | Path = ".", exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{stage: [what changed, ...]} for every stage whose deps, params or command differ from
    dvc.lock (a stage never run counts as stale: nothing recorded follows from this tree)."""
    from dvc.lock import LockNoop
    from dvc.repo import Repo

    out: dict[str, list[str]] = {}
    with Repo(str(root)) as repo:
        repo.lock = LockNoop()  # read-only; dvc repro may hold the real lock (the report stage)
        statuses = {}
        with repo.lock:  # the no-op lock, "held" as Stage.status requires
            for stage in repo.index.stages:
                # one stage at a time, the excluded ones never: a running stage holds the write
                # lock of its outputs, which a status of it would fail on
                if stage.addressing not in exclude:
                    statuses.update(stage.status())
        for stage, entries in statuses.items():
            name = stage.split(":", 1)[-1]  # "dvc.yaml:train@seq2seq-1" -> the address
            why = []
            for entry in entries:
                if isinstance(entry, str):  # "changed command", "always changed"
                    why.append(entry)
                    continue
                for path, change in (entry.get("changed deps") or {}).items():
                    if isinstance(change, dict):  # params.yaml: {key: modified | new | deleted}
                        why += [f"param {k} {v}" for k, v in change.items()]
                    elif change in CHANGED:
                        why.append(f"{path} {change}")
            if why:
                out[name] = why
    return dict(sorted(out.items()))


def head_commit(root: str | Path = ".") -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.staleness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when a stage is stale")
    ap.add_argument("-v", "--verbose", action="store_true", help="every change of every stale stage")
    args = ap.parse_args(argv)
    stale = stale_stages()
    for name, why in stale.items():
        shown = why if args.verbose else why[:3] + ([f"... {len(why) - 3} more"] if len(why) > 3 else [])
        print(f"{name}: {'; '.join(shown)}")
    print(f"{len(stale)} stale stage(s) at {head_commit()}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
