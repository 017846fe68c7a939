"""The Hugging Face hub's cache, as huggingface_hub lays it out, so that a model transformers downloaded is used
as is, and what npgpt downloads transformers can use: plain functions that know where a repo, blob, snapshot or
lock lives, which snapshot a revision has, whether a cached file is intact, and what the cache holds.
(npgpt.hub is the HTTP client that fills it.)

    $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
      models--openai-community--gpt2/
        blobs/<etag>                      the files' bytes, named by their hash (sha256 for large files)
        snapshots/<commit>/config.json -> ../../blobs/<etag>
        refs/main                         the commit the branch pointed to
        .no_exist/<commit>/merges.txt     a file the repo does not have (so it is not asked for again)
      .locks/models--openai-community--gpt2/<etag>.lock

A cached file is reused when it checks out: a small one (config, tokenizer, shard index) is hashed and compared
with its blob's name, which is its hash, so it costs no request; a large one is compared by size with what the
hub announces (hashing gigabytes on every load would take seconds, and what damages such a file in practice, a
copy or a download cut short, shows in its size).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass

import requests

from .config import HUB_REPOS
from .errors import HubError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are then not guarded
    fcntl = None

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"

_NAME_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^(?:{_NAME_PART}/)?{_NAME_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]{0,254}$")
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
ETAG_PATTERN = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_FILENAME = re.compile(r"^[A-Za-z0-9._-]+$")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # out of space, or over a quota
HASH_CHUNK = 1 << 20  # for hashing files
_HASH_LIMIT = 16 << 20  # cached files up to this size are hashed when reused (milliseconds); larger: by size

# --------------------------------------------------------------------------------------------------- names, paths


def _valid_repo_id(repo_id: str) -> bool:
    return bool(_REPO_ID.match(repo_id)) and ".." not in repo_id and "--" not in repo_id


def repo_id_for(name: str) -> str:
    """The hub repo id of a model name: an alias (gpt2, gpt2-medium, ...) or `org/name` itself."""
    repo_id = HUB_REPOS.get(name, name)
    if not _valid_repo_id(repo_id):
        raise HubError(f"{name!r} is not a valid model name (expected a name like gpt2 or org/name)")
    return repo_id


def looks_like_repo_id(name: str) -> bool:
    return name in HUB_REPOS or _valid_repo_id(name)


def check_revision(revision: str) -> str:
    if not _REVISION.match(revision) or ".." in revision.split("/") or "//" in revision:
        raise HubError(f"{revision!r} is not a valid revision (a branch, tag or commit)")
    return revision


def check_filename(filename: str) -> str:
    if not _FILENAME.match(filename) or filename in (".", ".."):
        raise HubError(f"refusing file name {filename!r}: it could point outside the cache")
    return filename


def cache_dir_from_env() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------- the cache layout


def repo_folder(cache_dir: str, repo_id: str) -> str:
    return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))


def blob_path(folder: str, etag: str) -> str:
    return os.path.join(folder, "blobs", etag)


def snapshot_path(folder: str, commit: str) -> str:
    return os.path.join(folder, "snapshots", commit)


def _locks_folder(folder: str) -> str:
    """Locks live beside the repos, in .locks/<repo folder>/, where huggingface_hub keeps them."""
    cache_dir, name = os.path.split(folder)
    return os.path.join(cache_dir, ".locks", name)


def lock_path(folder: str, etag: str) -> str:
    return os.path.join(_locks_folder(folder), etag + ".lock")


def _missing_marker(folder: str, commit: str, filename: str) -> str:
    return os.path.join(folder, ".no_exist", commit, filename)


def read_ref(folder: str, revision: str) -> str | None:
    """The commit a branch or tag pointed to when it was last fetched (None: never, or unreadable)."""
    try:
        with open(os.path.join(folder, "refs", revision), encoding="utf-8") as f:
            commit = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if COMMIT_PATTERN.match(commit) else None


def find_snapshot(folder: str, revision: str) -> str | None:
    """The cached snapshot of a branch, tag or commit, if it has a config and weights (None otherwise)."""
    commit = revision if COMMIT_PATTERN.match(revision) else read_ref(folder, revision)
    if commit is None:
        return None
    snapshot = snapshot_path(folder, commit)
    has_weights = any(os.path.isfile(os.path.join(snapshot, f)) for f in (WEIGHTS, WEIGHTS_INDEX))
    return snapshot if has_weights and os.path.isfile(os.path.join(snapshot, CONFIG)) else None


def write_ref(folder: str, revision: str, commit: str) -> None:
    path = os.path.join(folder, "refs", revision)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomic(path, commit.encode())


def mark_missing(folder: str, commit: str, filename: str) -> None:
    """Remember that the repo has no such file at this commit, so that it is not asked for again."""
    path = _missing_marker(folder, commit, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def is_marked_missing(folder: str, commit: str, filename: str) -> bool:
    return os.path.exists(_missing_marker(folder, commit, filename))


def link(snapshot: str, filename: str, blob: str) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, relative, as huggingface_hub makes it."""
    os.makedirs(snapshot, exist_ok=True)
    path = os.path.join(snapshot, filename)
    if os.path.realpath(path) == os.path.realpath(blob):
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.symlink(os.path.relpath(blob, snapshot), tmp)
    except OSError:  # no symlinks here: a copy
        shutil.copyfile(blob, tmp)
    os.replace(tmp, path)


def remove_repo(folder: str) -> None:
    """Remove a repo's folder and its locks (what a failed first download leaves)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(_locks_folder(folder), ignore_errors=True)


def file_hash(path: str, etag: str) -> str:
    """The file's hash as the hub names it; the etag's length says which: sha256 for large ("LFS") files,
    git's blob sha1 for the others."""
    if len(etag) == 64:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def blob_intact(path: str, etag: str, size: int | None) -> bool:
    """Whether a cached file still holds what the hub announced: the size, and for a small file the hash.
    A large file is not hashed: reading gigabytes on every load would take seconds, and what damages one in
    practice (a copy or a download cut short, a disk that filled up) shows in its size."""
    try:
        actual = os.path.getsize(path)
    except OSError:
        return False
    if size is not None and actual != size:
        return False
    return actual > _HASH_LIMIT or file_hash(path, etag) == etag


def intact_by_name(path: str) -> bool:
    """Whether a small cached file is intact, without asking the hub: its blob's name is its hash."""
    blob = os.path.realpath(path)
    etag = os.path.basename(blob)
    return (bool(ETAG_PATTERN.match(etag)) and os.path.isfile(blob) and os.path.getsize(blob) <= _HASH_LIMIT
            and file_hash(blob, etag) == etag)


@contextmanager
def locked(path: str):
    """Hold an exclusive lock on `path` (created if need be) for the duration of the block."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


@dataclass
class CachedModel:
    repo_id: str
    path: str
    size: int  # bytes of its blobs
    refs: dict[str, str]  # revision name -> commit
    snapshots: list[str]  # commits


def list_cached(cache_dir: str) -> list[CachedModel]:
    """What the cache holds: one entry per repo, with its revisions and size on disk."""
    if not os.path.isdir(cache_dir):
        return []
    models = []
    for entry in sorted(os.listdir(cache_dir)):
        if entry.startswith("models--"):
            folder = os.path.join(cache_dir, entry)
            snapshots = os.path.join(folder, "snapshots")
            models.append(CachedModel(entry.removeprefix("models--").replace("--", "/"), folder, _blobs_size(folder),
                                      _refs(folder), sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []))
    return models


def _blobs_size(folder: str) -> int:
    blobs = os.path.join(folder, "blobs")
    return sum(os.path.getsize(os.path.join(blobs, b)) for b in os.listdir(blobs)) if os.path.isdir(blobs) else 0


def _refs(folder: str) -> dict[str, str]:
    refs, refs_dir = {}, os.path.join(folder, "refs")
    for root, _, names in os.walk(refs_dir):
        for name in names:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                refs[os.path.relpath(os.path.join(root, name), refs_dir)] = f.read().strip()
    return refs


@contextmanager
def cache_errors(label: str, path: str):
    """Turn a failure to write the cache (a full disk, no permission, a file where a folder should be) into
    one line that names the file, and what to do."""
    try:
        yield
    except requests.RequestException:
        raise  # OSErrors too, but the network's: they are handled where they happen
    except OSError as e:
        raise disk_error(label, e, path) from None


def disk_error(label: str, error: OSError, path: str, size: int | None = None) -> HubError:
    path = error.filename or path
    if error.errno in _DISK_FULL:
        of_size = f", a file of {size / 1e6:.1f} MB" if size else ""
        return HubError(f"{label}: the disk is full: cannot write {path}{of_size}; free some space, or set "
                        "HF_HUB_CACHE to a directory on a disk with room")
    reason = error.strerror or error.__class__.__name__
    return HubError(f"{label}: cannot use the cache: {path}: {reason}; make it writable, or set HF_HUB_CACHE "
                    "to a directory that is")
