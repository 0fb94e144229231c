"""The "what moved" table of a regeneration: claims matched by id, status before and after."""

from __future__ import annotations

import json
import subprocess

import pytest

from pipeline.evaluation import claims_diff


def claim(cid, holds, diff=0.01, collapsed=()):
    return {"id": cid, "holds": holds, "difference": None if holds == "not run" else diff,
            "ci95": None if holds == "not run" else [diff - 0.005, diff + 0.005], "collapsed": list(collapsed)}


def test_status_of_each_kind_of_claim():
    assert [claims_diff.status(claim("a", h)) for h in (True, False, "not significant", "not run")] == [
        "yes", "no", "n.s.", "not run"]
    assert claims_diff.status(claim("a", True, collapsed=["x"])) == "yes ⚠"
    assert claims_diff.status(None) == "—"


def test_moved_matches_by_id_and_lists_added_and_removed_claims():
    before = [claim("kept", True), claim("flipped", "not significant"), claim("gone", False)]
    after = [claim("flipped", True, collapsed=["seq2seq_history_deeprl"]), claim("kept", True), claim("new", "not run")]
    rows = {r["id"]: r for r in claims_diff.moved(before, after)}
    assert [r["id"] for r in claims_diff.moved(before, after)] == ["flipped", "kept", "new", "gone"]
    assert (rows["flipped"]["before"], rows["flipped"]["after"], rows["flipped"]["changed"]) == ("n.s.", "yes ⚠", True)
    assert not rows["kept"]["changed"]
    assert (rows["new"]["before"], rows["gone"]["after"]) == ("—", "—")
    text = claims_diff.render(list(rows.values()), "abc123")
    assert "3 of 4 claims changed status" in text and "| **`flipped`** | n.s. | yes ⚠ | +0.0100 [+0.0050, +0.0150]" in text


def test_main_reads_the_earlier_commit_and_fails_in_one_line_on_a_bad_one(tmp_path, monkeypatch):
    from pipeline.io import InputError

    monkeypatch.chdir(tmp_path)
    git = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/claims.json").write_text(json.dumps([claim("c", "not significant")]))
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "old")
    (tmp_path / "reports/claims.json").write_text(json.dumps([claim("c", True)]))
    out = claims_diff.main(["--before", "HEAD"])
    assert "1 of 1 claims changed status" in out.read_text()
    with pytest.raises(InputError, match="not readable at 'nope'"):
        claims_diff.main(["--before", "nope"])
