"""Shards on a server: where ``data.shards`` points, and how its manifest and shards are opened.

``data.shards`` takes three forms (docs/data-format.md, "Shards on a server"):

* a local folder written by `avssl shards` (the manifest is ``<folder>/manifest.json``);
* the URL of such a folder, ``http(s)://host/…/shards/`` or any scheme webdataset opens
  (``gs://``, ``hf://``, …; the manifest is ``<url>/manifest.json``, each shard ``<url>/<file>``);
* a list of shards: a brace-expanded pattern (``https://host/shards/{train,val}-{000000..000009}.tar``)
  and/or a webdataset ``pipe:`` command (``pipe:aws s3 cp s3://bucket/shards/train-{000000..000009}.tar -``).
  The manifest is read from beside the shards: the first listed shard's URL or command with
  its file name replaced by ``manifest.json`` (where `avssl shards` writes it, and where a copy
  of the folder keeps it). Each listed shard is matched to the manifest entry of the same
  file name; a split must be listed whole or not at all.

Everything is opened with webdataset's openers (:func:`webdataset.gopen`: ``curl`` for
http(s), a shell for ``pipe:``), so a run reads what ``webdataset.WebDataset`` would.

Reachability at the start: an http(s) shard is checked with a HEAD request (a missing one
stops the run before training, naming it, as a missing local file does); a ``pipe:`` command
(or another scheme) cannot be checked without running it (it would download the shard), so a shard it cannot
open is counted at read time as lost samples, like a connection dropped in the middle of a
shard (:mod:`avssl.data.skips`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import webdataset as wds
from webdataset.shardlists import expand_urls

from avssl.data.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HTTP = ("http://", "https://")  # checked with a HEAD request at the start
PIPE = "pipe:"
# A shard's file name inside a URL or a pipe: command: the last "<name>.tar" before the end,
# a space, a quote or a query string.
_SHARD_NAME = re.compile(r"""([^/\s'"?]+\.tar)(?=$|[\s'"?])""")
HEAD_TIMEOUT_S = 30.0
HEAD_THREADS = 8


def is_url(location: str) -> bool:
    """A URL webdataset's :func:`~webdataset.gopen` opens (``http(s)://``, ``gs://``, ``hf://``, …)."""
    scheme = urlparse(str(location)).scheme
    return scheme not in ("", "file", "pipe") and scheme in wds.gopen_schemes


def is_shard_list(location: str) -> bool:
    """A brace pattern or a ``pipe:`` command: the shards are named one by one."""
    location = str(location)
    return location.startswith(PIPE) or "::" in location or ("{" in location and "}" in location)


def is_local_folder(location: str) -> bool:
    return not is_url(location) and not is_shard_list(location)


def is_local_path(spec: str) -> bool:
    """One shard's spec names a local file (not a URL, not a command)."""
    return not is_url(spec) and not str(spec).startswith(PIPE)


def shard_name(spec: str) -> str:
    """The shard's file name in a listed URL or command (``train-000003.tar``)."""
    found = _SHARD_NAME.findall(spec)
    if not found:
        from avssl.errors import RecipeError

        raise RecipeError(f"data.shards: {spec!r} names no .tar file; list the shards by their file names "
                          f"(e.g. train-{{000000..000009}}.tar)")
    return found[-1]


def expand(location: str) -> list[str]:
    """The shards a list names, in order: webdataset's expansion (``::`` between patterns,
    ``$WDS_…`` variables, braces)."""
    return expand_urls(str(location))


def manifest_location(location: str) -> str:
    """Where the manifest of ``data.shards`` is read from (a path, a URL or a command)."""
    location = str(location)
    if is_shard_list(location):
        first = expand(location)[0]
        name = shard_name(first)
        cut = first.rindex(name)
        return first[:cut] + MANIFEST + first[cut + len(name):]
    if is_url(location):
        return location.rstrip("/") + "/" + MANIFEST
    return str(Path(location) / MANIFEST)


def read_manifest(location: str, missing_ok: bool = False) -> dict[str, Any] | None:
    """The manifest of ``data.shards``, parsed; read once per process (the recipe check, the
    shards-fit check and the data module all ask for it): a local one again when its file
    changed, one from a server or command once. Shared between callers: read it, never change it.

    A local folder without one raises FileNotFoundError (``missing_ok``: None instead); a
    server or command that does not give it, DataError."""
    where = manifest_location(location)
    if is_local_folder(location):
        path = Path(where)
        if not path.exists():
            if missing_ok:
                return None
            raise FileNotFoundError(f"{path} not found: point data.shards at a folder written by `avssl shards`")
        stat = path.stat()
        key = (where, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _MANIFESTS:
            _MANIFESTS[key] = json.loads(path.read_text())
        return _MANIFESTS[key]
    if where not in _MANIFESTS:
        _MANIFESTS[where] = _read_remote_manifest(location, where)
    return _MANIFESTS[where]


# Manifests read in this process: a local one by its path and file version, a remote one by its place.
_MANIFESTS: dict[Any, dict[str, Any]] = {}


def _read_remote_manifest(location: str, where: str) -> dict[str, Any]:
    try:
        with wds.gopen(where) as stream:
            text = stream.read()
        return json.loads(text)
    except Exception as error:  # curl's exit status, a shell error, bad JSON: one line that names the place
        reason = _reason(error, where)
        raise DataError(f"data.shards={location}: could not read its manifest from {where} ({reason}); "
                        f"check the address and that manifest.json sits beside the shards") from error


# curl's exit statuses a wrong address gives (curl(1), "EXIT CODES")
_CURL_EXITS = {6: "could not resolve the host", 7: "could not connect", 22: "the server answered with an HTTP error",
               28: "timed out"}


def _reason(error: Exception, where: str) -> str:
    """The opener's failure in a few words (webdataset's message repeats the whole command)."""
    status = re.search(r"\bexit (\d+)", str(error))
    if status is None:
        return " ".join(str(error).split())[:200]
    code = int(status.group(1))
    if where.startswith(HTTP):  # webdataset opens http(s) with curl
        return f"curl exit status {code}" + (f": {_CURL_EXITS[code]}" if code in _CURL_EXITS else "")
    return f"the command's exit status {code}" if where.startswith(PIPE) else f"the opener's exit status {code}"


def shard_specs(location: str, manifest: dict[str, Any], split: str, files: list[str]) -> list[str]:
    """What opens each of ``files`` (the manifest's file names of ``split``), in their order."""
    location = str(location)
    if not is_shard_list(location):
        if is_url(location):
            return [location.rstrip("/") + "/" + f for f in files]
        return [str(Path(location) / f) for f in files]
    listed: dict[str, str] = {}
    for spec in expand(location):
        listed.setdefault(shard_name(spec), spec)
    known = {Path(e["file"]).name for s in manifest.get("splits", {}).values() for e in s.get("shards", [])}
    unknown = sorted(set(listed) - known)
    if unknown:
        raise DataError(f"data.shards lists {len(unknown)} shard(s) the manifest at {manifest_location(location)} "
                        f"does not: {', '.join(unknown[:3])}{' …' if len(unknown) > 3 else ''}; list the shards "
                        f"of that folder")
    absent = [f for f in files if Path(f).name not in listed]
    if len(absent) == len(files):
        raise DataError(f"split {split!r}: none of its {len(files)} shards is in data.shards={location}; "
                        f"list them (e.g. {split}-{{000000..{len(files) - 1:06d}}}.tar)")
    if absent:
        raise DataError(f"split {split!r}: {len(absent)} of its {len(files)} shards are not in data.shards="
                        f"{location}: {', '.join(absent[:3])}{' …' if len(absent) > 3 else ''}; a split is "
                        f"read whole: list them all")
    return [listed[Path(f).name] for f in files]


def _reachable(url: str) -> bool:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT_S) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.info("HEAD %s: %s", url, error)
        return False


def unreachable(specs: tuple[str, ...]) -> list[str]:
    """The shards that are certainly not there at the start: local files that do not exist,
    http(s) URLs whose HEAD request fails. ``pipe:`` commands and other schemes are not run
    (reading one would download it): a shard they cannot give is counted when it is read."""
    local = [s for s in specs if is_local_path(s)]
    urls = [s for s in specs if str(s).startswith(HTTP)]
    missing = {s for s in local if not Path(s).is_file()}
    if urls:
        with ThreadPoolExecutor(min(HEAD_THREADS, len(urls))) as pool:
            missing |= {u for u, ok in zip(urls, pool.map(_reachable, urls)) if not ok}
    return [s for s in specs if s in missing]


def shard_stamp(spec: str) -> str:
    """What tells one version of a shard from another, for caches keyed on the shards: a
    local file's size and modification time; a URL or command, itself (a server's shard
    rewritten with the same name and sample count is not noticed: clear the cache)."""
    if not is_local_path(spec):
        return spec
    stat = os.stat(spec)
    return f"{stat.st_size}:{int(stat.st_mtime)}"


__all__ = ["MANIFEST", "expand", "is_local_folder", "is_shard_list", "is_url", "manifest_location", "read_manifest",
           "shard_name", "shard_specs", "shard_stamp", "unreachable"]
