"""Get the raw Persona-Chat files: download ParlAI's archive, or take a local copy.

Sources: ``parlai`` (download ``url`` into a cache, resumable, size- and sha256-checked),
a directory of ParlAI ``*.txt`` files, or a ``.tgz``/``.tar.gz``/``.tar`` archive. The
archive is read member by member and only regular files are written, each under its base
name, into the output folder; an archive with any member that would write outside its
folder (absolute path, ``..``, a link pointing out) is refused as a whole.

The copies are byte-identical, and ``data/raw/sources.json`` records each one's origin
(``write_sources``) so that later messages name the user's file, not the copy:
``<fetch.source>/<path>`` for a directory, ``<archive>(<member>)`` for an archive (the URL
for ``parlai``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from pipeline.io import InputError, atomic_path, progress

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
IDF = Path("data/persona_idf/idf.tsv")
SOURCES = "sources.json"  # the manifest; pipeline.preprocessing.parlai.SOURCES reads it
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$PERSONA_DIALOGUE_CACHE``, else ``$XDG_CACHE_HOME/persona-dialogue`` (~/.cache)."""
    if os.environ.get("PERSONA_DIALOGUE_CACHE"):
        return Path(os.environ["PERSONA_DIALOGUE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "persona-dialogue"


# --- download -------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, url: str, size: int | None, sha256: str | None) -> None:
    got = path.stat().st_size
    if size is not None and got != size:
        raise InputError(url, f"downloaded {got:,} bytes, expected {size:,} (fetch.size)")
    if sha256:
        digest = sha256_of(path)
        if digest != sha256.lower():
            raise InputError(url, f"sha256 {digest} does not match fetch.sha256 {sha256}")


def download(url: str, dest_dir: Path, size: int | None = None, sha256: str | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` into ``dest_dir`` once; reuse a verified copy; resume a partial one.

    The file appears under its final name only after it is complete and verified (a
    ``.part`` file holds the bytes so far, and a rerun continues it with an HTTP Range).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / (posixpath.basename(urllib.parse.urlsplit(url).path) or "download")
    if final.is_file():
        try:
            _verify(final, url, size, sha256)
            log.info("using cached %s", final)
            return final
        except InputError as e:
            log.warning("cached %s is bad (%s); downloading again", final, e.message)
            final.unlink()
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:  # not a prefix of the file we want
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # server ignored the Range: start over
                have = 0
            total = size or (int(response.headers.get("Content-Length", 0)) + have) or None
            with open(part, "ab" if have else "wb") as f, progress(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"download {final.name}",
            ) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        if e.code == 416 and size is not None and have == size:  # .part already complete
            pass
        else:
            raise InputError(url, f"download failed: HTTP {e.code} {e.reason}{_OFFLINE_HINT}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(url, f"download failed: {reason}{_OFFLINE_HINT}; a rerun resumes from "
                         f"{part}") from None
    try:
        _verify(part, url, size, sha256)
    except InputError:
        part.unlink()  # a wrong file must not be resumed
        raise
    os.replace(part, final)
    log.info("downloaded %s (%d bytes)", final, final.stat().st_size)
    return final


_OFFLINE_HINT = (" (offline? point fetch.source at a local copy, e.g. "
                 "`dvc exp run -S fetch.source=../shared/data/personachat`)")


# --- local sources ------------------------------------------------------------------------


def copy_directory(src: Path, out: Path, include: str = "*.txt", label: str | None = None) -> dict[str, str]:
    """Copy every file matching ``include`` under ``src`` (recursively) into ``out`` by name.

    Returns {name: the file as the user names it} by name, ``label`` (default ``src``)
    standing for ``src``."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and fnmatch.fnmatch(p.name, include))
    names: dict[str, Path] = {}
    for p in files:
        if p.name in names:
            raise InputError(src, f"two files named {p.name}: {names[p.name]} and {p} "
                             "(the output folder is flat)")
        names[p.name] = p
    if not names:
        raise InputError(src, f"no ParlAI files matching {include!r} in this directory")
    base = (str(src) if label is None else label).rstrip("/") or "/"
    sources = {}
    for name, p in progress(sorted(names.items()), desc="copy", unit="file"):
        shutil.copyfile(p, out / name)
        sources[name] = posixpath.join(base, p.relative_to(src).as_posix())
    return sources


def _escapes(name: str) -> str | None:
    """Why an archive path would land outside the extraction folder, or None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' in the path"
    return None


def check_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    """Refuse the archive if any member would write, or point, outside its folder."""
    for m in members:
        reason = _escapes(m.name)
        if reason is None and (m.issym() or m.islnk()):
            # A symlink's target is relative to its own folder; a hardlink's to the root.
            target = posixpath.join(posixpath.dirname(m.name), m.linkname) if m.issym() else m.linkname
            if m.linkname.startswith("/") or posixpath.normpath(target).split("/")[0] == "..":
                reason = f"link to {m.linkname!r} points outside the folder"
        elif reason is None and not (m.isfile() or m.isdir()):
            reason = "device, fifo or other special file"
        if reason:
            raise InputError(archive, f"unsafe archive member {m.name!r}: {reason}; refusing to extract")


def extract_archive(archive: Path, out: Path, include: str = "*.txt", label: str | None = None) -> dict[str, str]:
    """Write the regular files of ``archive`` matching ``include`` into ``out`` by base name.

    Returns {name: ``<label>(<member>)``} by name, ``label`` (default ``archive``) naming the
    archive as the user does."""
    names: dict[str, str] = {}
    label = str(archive) if label is None else label
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole index: a truncated archive fails here
            check_members(members, archive)
            wanted = [m for m in members if m.isfile() and fnmatch.fnmatch(posixpath.basename(m.name), include)]
            seen: dict[str, str] = {}
            for m in progress(wanted, desc=f"extract {archive.name}", unit="file"):
                base = posixpath.basename(m.name)
                if base in seen:
                    raise InputError(archive, f"two members named {base}: {seen[base]} and {m.name}")
                seen[base] = m.name
                src = tar.extractfile(m)
                with open(out / base, "wb") as f:
                    shutil.copyfileobj(src, f, _CHUNK)
                names[base] = f"{label}({m.name})"
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise InputError(archive, f"truncated or corrupt archive ({type(e).__name__}: {e})") from None
    if not names:
        raise InputError(archive, f"no members matching {include!r} in this archive")
    return dict(sorted(names.items()))


def resolve_source(source: str, root: Path) -> Path:
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = root / path
    if not path.exists():
        raise InputError(path, "fetch.source not found (expected 'parlai', a directory of ParlAI "
                         "*.txt files, or a .tgz/.tar.gz archive)")
    if path.is_file() and not path.name.endswith(ARCHIVE_SUFFIXES):
        raise InputError(path, "unknown source format: expected a directory of ParlAI *.txt files "
                         f"or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    return path


def fetch(params: dict, out: Path, root: Path) -> dict[str, str]:
    """Fill the empty directory ``out`` from ``params`` (the ``fetch`` section); return
    {name: the user's file it copies} (see ``write_sources``)."""
    include = params.get("include") or "*.txt"
    if params["source"] == "parlai":
        archive = download(params["url"], cache_dir(), params.get("size"), params.get("sha256"))
        return extract_archive(archive, out, include, label=params["url"])
    source = str(params["source"])
    src = resolve_source(source, root)
    if src.is_dir():
        return copy_directory(src, out, include, label=source)
    return extract_archive(src, out, include, label=source)


def write_sources(out: Path, source: str, sources: dict[str, str]) -> Path:
    """``out/sources.json``: fetch.source and, per copied file, the user's file it copies
    (as ``fetch`` returned it) and its size, so that ``prepare`` names the user's file and
    line, and falls back to the copy's own name if the copy was changed since. Paths are
    written as the user wrote them (no resolving), so the manifest is the same on every
    machine."""
    if SOURCES in sources:
        raise InputError(sources[SOURCES], f"a source file named {SOURCES} would overwrite fetch's "
                         "manifest of data/raw; narrow fetch.include")
    manifest = {"source": str(source),
                "files": {name: {"source": label, "size": (out / name).stat().st_size}
                          for name, label in sorted(sources.items())}}
    path = out / SOURCES
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def copy_idf(source: str, out: Path, root: Path) -> Path:
    """Copy the ``word<TAB>idf`` table at ``source`` (relative to ``root``) to ``out``; the
    evaluate stage parses it (and names file and line of any bad one)."""
    src = Path(source).expanduser()
    src = src if src.is_absolute() else root / src
    if not src.is_file():
        raise InputError(src, "fetch.idf: no such file (the Persona Coverage idf table, e.g. "
                              "../shared/data/persona_idf/convai2_vocab_idf.tsv)")
    with atomic_path(out) as tmp:
        shutil.copyfile(src, tmp)
    log.info("wrote %s (%d bytes, from %s)", out, out.stat().st_size, src)
    return out
