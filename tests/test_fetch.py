"""fetch: local directories, safe archive extraction, verified resumable download, and the
stage as a subprocess that writes nothing on failure."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading

import pytest
import yaml

from pipeline.io import InputError
from pipeline.preprocessing import fetch
from tests.corpus import write_corpus

NAMES = ["test_self_original_no_cands.txt", "train_self_original_no_cands.txt",
         "valid_self_original_no_cands.txt"]


def make_tgz(path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None):
    """A gzip tar with regular ``members`` and ``links`` {name: (tarfile.SYMTYPE|LNKTYPE, target)}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path


def corpus_tgz(tmp_path):
    src = write_corpus(tmp_path / "src", sizes=(3, 2, 2))
    members = {f"personachat/{n}": (src / n).read_bytes() for n in NAMES}
    members["personachat/README.md"] = b"not a txt file"
    return make_tgz(tmp_path / "personachat.tgz", members), members


# --- local sources ----------------------------------------------------------------------


def test_directory_is_copied_flat(tmp_path):
    src = write_corpus(tmp_path / "src" / "nested", sizes=(2, 1, 1))
    (tmp_path / "src" / "notes.md").write_text("ignored")
    out = tmp_path / "out"
    out.mkdir()
    # each copy with the file it copies, as the user names it (relative to fetch.source)
    assert fetch.fetch({"source": "src"}, out, root=tmp_path) == {n: f"src/nested/{n}" for n in NAMES}
    assert sorted(os.listdir(out)) == NAMES
    assert (out / NAMES[1]).read_bytes() == (src / NAMES[1]).read_bytes()


def test_directory_include_pattern_and_duplicates(tmp_path):
    src = write_corpus(tmp_path / "src", sizes=(2, 1, 1))
    out = tmp_path / "out"
    out.mkdir()
    assert fetch.copy_directory(src, out, "train_*") == {NAMES[1]: f"{src}/{NAMES[1]}"}
    (src / "sub").mkdir()
    (src / "sub" / NAMES[0]).write_text("1 a\tb\n")
    with pytest.raises(InputError, match="two files named test_self"):
        fetch.copy_directory(src, out)


def test_empty_directory(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(InputError, match="no ParlAI files matching"):
        fetch.fetch({"source": str(tmp_path / "src")}, tmp_path, root=tmp_path)


def test_tgz_is_extracted_flat(tmp_path):
    archive, members = corpus_tgz(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert fetch.fetch({"source": str(archive)}, out, root=tmp_path) == {
        n: f"{archive}(personachat/{n})" for n in NAMES}  # archive(member)
    assert sorted(os.listdir(out)) == NAMES
    assert (out / NAMES[2]).read_bytes() == members[f"personachat/{NAMES[2]}"]


def test_links_inside_the_folder_are_allowed_but_not_written(tmp_path):
    archive = make_tgz(tmp_path / "a.tgz", {"d/train.txt": b"1 a\tb\n"},
                       {"d/alias.txt": (tarfile.SYMTYPE, "train.txt"),
                        "d/up.txt": (tarfile.SYMTYPE, "../d/train.txt"),
                        "d/hard.txt": (tarfile.LNKTYPE, "d/train.txt")})
    out = tmp_path / "out"
    out.mkdir()
    assert list(fetch.extract_archive(archive, out)) == ["train.txt"]


@pytest.mark.parametrize(
    "members,links,why",
    [
        ({"../evil.txt": b"x"}, None, "'..'"),
        ({"personachat/../../evil.txt": b"x"}, None, "'..'"),
        ({"/tmp/evil.txt": b"x"}, None, "absolute path"),
        ({"ok.txt": b"x"}, {"link.txt": (tarfile.SYMTYPE, "../../etc/passwd")}, "points outside"),
        ({"ok.txt": b"x"}, {"d/link.txt": (tarfile.SYMTYPE, "/etc/passwd")}, "points outside"),
        ({"ok.txt": b"x"}, {"d/link": (tarfile.SYMTYPE, "../..")}, "points outside"),
        ({"ok.txt": b"x"}, {"hard.txt": (tarfile.LNKTYPE, "../outside.txt")}, "points outside"),
        ({"ok.txt": b"x"}, {"fifo.txt": (tarfile.FIFOTYPE, "")}, "special file"),
    ],
)
def test_escaping_members_refuse_the_archive(tmp_path, members, links, why):
    archive = make_tgz(tmp_path / "evil.tgz", members, links)
    out = tmp_path / "sandbox" / "out"
    out.mkdir(parents=True)
    with pytest.raises(InputError) as e:
        fetch.extract_archive(archive, out)
    assert str(e.value).startswith(f"{archive}: unsafe archive member") and why in str(e.value)
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path / "sandbox")) == ["out"]


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_archive(tmp_path, keep):
    # Incompressible members so that a cut lands inside member data, not only the index.
    members = {f"personachat/{n}": os.urandom(50_000) for n in NAMES}
    data = make_tgz(tmp_path / "full.tgz", members).read_bytes()
    archive = tmp_path / "personachat.tgz"
    archive.write_bytes(data[: int(len(data) * keep)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="truncated or corrupt archive"):
        fetch.extract_archive(archive, out)


def test_not_an_archive(tmp_path):
    archive = tmp_path / "personachat.tgz"
    archive.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(InputError, match="truncated or corrupt archive"):
        fetch.extract_archive(archive, tmp_path)


def test_unknown_format_and_missing_source(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(InputError, match="unknown source format"):
        fetch.resolve_source("data.zip", tmp_path)
    with pytest.raises(InputError, match="fetch.source not found"):
        fetch.resolve_source("nowhere/personachat", tmp_path)


# --- download ---------------------------------------------------------------------------


class _Server:
    """Serves one payload at /personachat.tgz, honouring Range like parl.ai does."""

    def __init__(self, payload: bytes, cut: int | None = None):
        self.payload, self.cut, self.requests = payload, cut, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # `cut` simulates a dropped connection after that many bytes.
                self.wfile.write(body if server.cut is None else body[: server.cut])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/personachat.tgz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def start(payload, cut=None):
        servers.append(_Server(payload, cut))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_download_verifies_and_caches(tmp_path, server):
    payload = os.urandom(300_000)
    srv = server(payload)
    sha = hashlib.sha256(payload).hexdigest()
    path = fetch.download(srv.url, tmp_path, size=len(payload), sha256=sha)
    assert path.read_bytes() == payload and path.name == "personachat.tgz"
    assert fetch.download(srv.url, tmp_path, size=len(payload), sha256=sha) == path
    assert len(srv.requests) == 1  # the second call used the cache


def test_download_resumes_a_partial_file(tmp_path, server):
    payload = os.urandom(300_000)
    srv = server(payload, cut=100_000)
    with pytest.raises(InputError, match="downloaded 100,000 bytes, expected 300,000"):
        fetch.download(srv.url, tmp_path, size=len(payload))
    assert not (tmp_path / "personachat.tgz").exists()
    # A dropped connection that leaves a .part behind: the rerun asks only for the rest.
    (tmp_path / "personachat.tgz.part").write_bytes(payload[:120_000])
    srv.cut = None
    path = fetch.download(srv.url, tmp_path, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert path.read_bytes() == payload and srv.requests[-1] == "bytes=120000-"
    assert not (tmp_path / "personachat.tgz.part").exists()


def test_download_wrong_hash_leaves_nothing(tmp_path, server):
    srv = server(b"x" * 1000)
    with pytest.raises(InputError, match="sha256 .* does not match"):
        fetch.download(srv.url, tmp_path, size=1000, sha256="0" * 64)
    assert os.listdir(tmp_path) == []


def test_download_unreachable_says_how_to_go_offline(tmp_path):
    with pytest.raises(InputError, match="download failed.*fetch.source"):
        fetch.download("http://127.0.0.1:9/personachat.tgz", tmp_path, timeout=5)


def test_cached_bad_file_is_downloaded_again(tmp_path, server):
    payload = os.urandom(10_000)
    srv = server(payload)
    (tmp_path / "personachat.tgz").write_bytes(b"stale")
    assert fetch.download(srv.url, tmp_path, size=len(payload)).read_bytes() == payload


# --- the stage, as DVC runs it --------------------------------------------------------------


def run_fetch(root, params: dict, env: dict | None = None):
    (root / "params.yaml").write_text(yaml.safe_dump({"fetch": params}))
    env = {**os.environ, "PIPELINE_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_from_directory_and_rerun(tmp_path):
    write_corpus(tmp_path / "corpus", sizes=(2, 1, 1))
    repo = tmp_path / "repo"
    repo.mkdir()
    for _ in range(2):  # a rerun replaces data/raw
        r = run_fetch(repo, {"source": "../corpus"})
        assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(repo / "data" / "raw")) == sorted(NAMES + ["sources.json"])
    assert sorted(os.listdir(repo / "data")) == ["raw"]  # no temporary folders left
    assert "wrote data/raw: 3 files" in r.stderr


def test_stage_download_from_local_server(tmp_path, server):
    archive, members = corpus_tgz(tmp_path)
    payload = archive.read_bytes()
    srv = server(payload)
    repo = tmp_path / "repo"
    repo.mkdir()
    r = run_fetch(repo, {"source": "parlai", "url": srv.url, "size": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest()},
                  env={"PERSONA_DIALOGUE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(repo / "data" / "raw")) == sorted(NAMES + ["sources.json"])
    assert (tmp_path / "cache" / "personachat.tgz").read_bytes() == payload
    files = json.loads((repo / "data/raw/sources.json").read_text())["files"]  # the URL, not the cache
    assert {n: f["source"] for n, f in files.items()} == {n: f"{srv.url}(personachat/{n})" for n in NAMES}


@pytest.mark.parametrize("case", ["missing", "escaping", "truncated", "unknown"])
def test_stage_fails_cleanly(tmp_path, case):
    repo = tmp_path / "repo"
    repo.mkdir()
    source = tmp_path / "source.tgz"
    if case == "escaping":
        make_tgz(source, {"personachat/train.txt": b"1 a\tb\n", "../../escaped.txt": b"x"})
    elif case == "truncated":
        archive, _ = corpus_tgz(tmp_path)
        source.write_bytes(archive.read_bytes()[:200])
    elif case == "unknown":
        source = tmp_path / "source.json"
        source.write_text("{}")
    r = run_fetch(repo, {"source": str(source)})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {source}: "), r.stderr
    assert os.listdir(repo) == ["params.yaml"]  # no data/, no data/raw, no temporary folder
    assert not (tmp_path / "escaped.txt").exists()


def test_stage_copies_the_idf_table_or_names_a_missing_one(tmp_path):
    write_corpus(tmp_path / "corpus", sizes=(2, 1, 1))
    (tmp_path / "idf.tsv").write_text("dog\t0.16\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    r = run_fetch(repo, {"source": "../corpus", "idf": "../idf.tsv"})
    assert r.returncode == 0, r.stderr
    assert (repo / "data/persona_idf/idf.tsv").read_text() == "dog\t0.16\n"
    r = run_fetch(repo, {"source": "../corpus", "idf": "../nowhere.tsv"})
    assert r.returncode == 2 and "nowhere.tsv: fetch.idf: no such file" in r.stderr.strip().splitlines()[-1]


# --- data/raw/sources.json: which of the user's files each copy is ------------------------------


def test_stage_writes_the_manifest_of_the_users_files(tmp_path):
    src = write_corpus(tmp_path / "corpus" / "v1", sizes=(2, 1, 1))
    repo = tmp_path / "repo"
    repo.mkdir()
    r = run_fetch(repo, {"source": "../corpus"})
    assert r.returncode == 0, r.stderr
    manifest = json.loads((repo / "data/raw/sources.json").read_text())
    # as the user wrote fetch.source (never resolved: the same on every machine), with each size
    assert manifest == {"source": "../corpus", "files": {
        n: {"source": f"../corpus/v1/{n}", "size": (src / n).stat().st_size} for n in NAMES}}
    assert all((repo / "data/raw" / n).read_bytes() == (src / n).read_bytes() for n in NAMES)
    archive, _ = corpus_tgz(tmp_path)
    r = run_fetch(repo, {"source": "../personachat.tgz"})
    assert r.returncode == 0, r.stderr
    files = json.loads((repo / "data/raw/sources.json").read_text())["files"]
    assert files[NAMES[0]]["source"] == f"../personachat.tgz(personachat/{NAMES[0]})"


def test_a_source_file_named_like_the_manifest_is_refused(tmp_path):
    src = write_corpus(tmp_path / "corpus", sizes=(2, 1, 1))
    (src / "sources.json").write_text("{}")
    repo = tmp_path / "repo"
    repo.mkdir()
    r = run_fetch(repo, {"source": "../corpus", "include": "*"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "error: ../corpus/sources.json: a source file named sources.json would overwrite fetch's manifest "
        "of data/raw; narrow fetch.include")
    assert os.listdir(repo) == ["params.yaml"]


def test_manifest_name_is_the_one_prepare_reads():
    from pipeline.preprocessing import parlai

    assert fetch.SOURCES == parlai.SOURCES
