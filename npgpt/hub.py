"""Fetching GPT-2 checkpoints from the Hugging Face hub into the hub's own cache, safely and resumably.

The cache is laid out as huggingface_hub lays it out, so a model transformers downloaded is used as is, and what
npgpt downloads transformers can use:

    $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
      models--openai-community--gpt2/
        blobs/<etag>                      the files' bytes, named by their hash (sha256 for large files)
        snapshots/<commit>/config.json -> ../../blobs/<etag>
        refs/main                         the commit the branch pointed to
        .no_exist/<commit>/merges.txt     a file the repo does not have (so it is not asked for again)
      .locks/models--openai-community--gpt2/<etag>.lock

Each file is asked for with HEAD `{endpoint}/{repo}/resolve/{revision}/{file}`, which answers the commit
(X-Repo-Commit), the file's hash (X-Linked-Etag or ETag), its size and, for large files, a redirect to where the
bytes are. The bytes go to `blobs/<etag>.incomplete` (resumed with a Range request after an interruption),
are checked against the hash, and only then renamed into place. A lock per blob keeps two processes from
writing the same file. Transient failures (connection errors, timeouts, 5xx, 429) are retried with backoff.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

import requests

from .config import HUB_REPOS, GPT2Config
from .errors import HubError, NpgptError, WeightsError
from .weights import shard_names

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are then not guarded
    fcntl = None

DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")
PICKLE_FILES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")

_NAME_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^(?:{_NAME_PART}/)?{_NAME_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]{0,254}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_ETAG = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_FILENAME = re.compile(r"^[A-Za-z0-9._-]+$")
_RETRY_STATUS = {429, 500, 502, 503, 504}
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_CHUNK = 1 << 20  # for hashing files
_NET_CHUNK = 1 << 16  # for reading the network: what arrived before a cut is kept, but for < 64 kB


class _Transient(Exception):
    """A failure worth another try: a lost or refused connection, a timeout, HTTP 5xx or 429."""

    def __init__(self, message: str, connection: bool, delay: float | None = None):
        super().__init__(message)
        self.message, self.connection, self.delay = message, connection, delay


class _CannotConnect(Exception):
    """The endpoint could not be reached at all (after retries): a cached copy may serve instead."""


class _Interrupted(HubError):
    """A download that kept failing part way: its .incomplete file stays, to be resumed next time."""


# --------------------------------------------------------------------------------------------------- names, paths


def repo_id_for(name: str) -> str:
    """The hub repo id of a model name: an alias (gpt2, gpt2-medium, ...) or `org/name` itself."""
    repo_id = HUB_REPOS.get(name, name)
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise HubError(f"{name!r} is not a valid model name (expected a name like gpt2 or org/name)")
    return repo_id


def looks_like_repo_id(name: str) -> bool:
    return name in HUB_REPOS or (bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name)


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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def repo_folder(cache_dir: str, repo_id: str) -> str:
    return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))


# ----------------------------------------------------------------------------------------------------- the client


@dataclass
class FileInfo:
    commit: str  # the commit the revision resolves to
    etag: str  # sha256 (large files) or git blob sha1 of the content
    size: int | None
    url: str  # where to GET the bytes (after the hub's redirect)


@dataclass
class Hub:
    """A client for one endpoint and one cache. `Hub.from_env()` reads the Hugging Face variables."""

    cache_dir: str
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)
    offline: bool = False
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    retries: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: tuple[float, float] = (10.0, 60.0)  # connect, read

    def __post_init__(self):
        self.endpoint = self.endpoint.rstrip("/")
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise HubError(f"HF_ENDPOINT must be an http(s) URL, got {self.endpoint!r}")
        self._origin = _origin(self.endpoint)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "npgpt"

    @classmethod
    def from_env(cls, **overrides) -> "Hub":
        settings = dict(cache_dir=cache_dir_from_env(), endpoint=os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT,
                        token=os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None,
                        offline=_env_flag("HF_HUB_OFFLINE"))
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)

    # ------------------------------------------------------------------------------------------------- snapshot

    def snapshot(self, name: str, revision: str | None = None) -> str:
        """The local directory of `name` at `revision` (default main), downloading what is missing.

        Fetches config.json (checked to be a GPT-2's before anything large is fetched), model.safetensors
        (or its shards) and the tokenizer files the repo has. Offline, or when the hub cannot be reached,
        a cached snapshot is used.
        """
        repo_id = repo_id_for(name)
        revision = check_revision(revision or "main")
        label = name if name == repo_id else f"{name} ({repo_id})"
        if _COMMIT.match(revision) and self._find_snapshot(repo_id, revision):  # a commit never changes
            return self._find_snapshot(repo_id, revision)
        if self.offline:
            return self._cached_snapshot(repo_id, revision, label, why="HF_HUB_OFFLINE is set")
        folder = repo_folder(self.cache_dir, repo_id)
        existed = os.path.isdir(folder)
        try:
            return self._download_snapshot(repo_id, revision, label)
        except _CannotConnect as e:
            cached = self._find_snapshot(repo_id, revision)
            if cached:
                return cached
            raise HubError(f"{label}: cannot reach {self.endpoint} ({e}); the model is not cached either") from None
        except NpgptError as e:
            if not existed and not isinstance(e, _Interrupted):  # leave nothing half-made behind
                shutil.rmtree(folder, ignore_errors=True)
                shutil.rmtree(os.path.join(self.cache_dir, ".locks", os.path.basename(folder)), ignore_errors=True)
            raise

    def _download_snapshot(self, repo_id: str, revision: str, label: str) -> str:
        folder = repo_folder(self.cache_dir, repo_id)
        config = self._info(repo_id, revision, CONFIG, label, required=True)
        commit = config.commit
        snapshot = os.path.join(folder, "snapshots", commit)
        files = {CONFIG: self._fetch(repo_id, CONFIG, config, label)}
        GPT2Config.from_json(files[CONFIG])  # a GPT-2? (asked before fetching gigabytes)
        weights, known = self._weight_files(repo_id, commit, snapshot, label)
        files.update(known)
        for filename in weights + [f for f in TOKENIZER_FILES if f not in weights]:
            if filename in files:
                continue
            cached = os.path.join(snapshot, filename)
            if os.path.isfile(cached):  # already here: not even a HEAD request
                files[filename] = cached
                continue
            if os.path.exists(os.path.join(folder, ".no_exist", commit, filename)):
                continue
            info = self._info(repo_id, commit, filename, label, required=filename in weights)
            if info is None:
                self._mark_missing(repo_id, commit, filename)
                continue
            files[filename] = self._fetch(repo_id, filename, info, label)
        for filename, blob in files.items():
            self._link(snapshot, filename, blob)
        if revision != commit:
            refs = os.path.join(folder, "refs", revision)
            os.makedirs(os.path.dirname(refs), exist_ok=True)
            _write_atomic(refs, commit.encode())
        return snapshot

    def _weight_files(self, repo_id: str, commit: str, snapshot: str, label: str) -> tuple[list[str], dict]:
        """The weight files to have (model.safetensors, or the index and its shards), and those fetched here."""
        if os.path.isfile(os.path.join(snapshot, WEIGHTS)):
            return [WEIGHTS], {}
        fetched = {}
        index = os.path.join(snapshot, WEIGHTS_INDEX)
        if not os.path.isfile(index):
            info = self._info(repo_id, commit, WEIGHTS, label, required=False)
            if info is not None:
                return [WEIGHTS], {WEIGHTS: self._fetch(repo_id, WEIGHTS, info, label)}
            info = self._info(repo_id, commit, WEIGHTS_INDEX, label, required=False)
            if info is None:
                raise HubError(f"{label}: the repo has no {WEIGHTS}; npgpt loads only safetensors "
                               f"(never pickle files such as pytorch_model.bin)")
            index = fetched[WEIGHTS_INDEX] = self._fetch(repo_id, WEIGHTS_INDEX, info, label)
        try:
            shards = [check_filename(s) for s in shard_names(index)]
        except WeightsError as e:
            raise HubError(f"{label}: {e}") from None
        return [WEIGHTS_INDEX] + shards, fetched

    # --------------------------------------------------------------------------------------------------- cache

    def _find_snapshot(self, repo_id: str, revision: str) -> str | None:
        folder = repo_folder(self.cache_dir, repo_id)
        commit = revision
        if not _COMMIT.match(revision):
            try:
                with open(os.path.join(folder, "refs", revision), encoding="utf-8") as f:
                    commit = f.read().strip()
            except OSError:
                return None
            if not _COMMIT.match(commit):
                return None
        snapshot = os.path.join(folder, "snapshots", commit)
        has_weights = any(os.path.isfile(os.path.join(snapshot, f)) for f in (WEIGHTS, WEIGHTS_INDEX))
        if os.path.isfile(os.path.join(snapshot, CONFIG)) and has_weights:
            return snapshot
        return None

    def _cached_snapshot(self, repo_id: str, revision: str, label: str, why: str) -> str:
        snapshot = self._find_snapshot(repo_id, revision)
        if snapshot is None:
            at = "" if revision == "main" else f" at revision {revision}"
            raise HubError(f"{label}{at} is not in the cache ({self.cache_dir}) and {why}; "
                           f"download it first with: npgpt download {label.split(' ')[0]}")
        return snapshot

    def _mark_missing(self, repo_id: str, commit: str, filename: str) -> None:
        path = os.path.join(repo_folder(self.cache_dir, repo_id), ".no_exist", commit, filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()

    def _link(self, snapshot: str, filename: str, blob: str) -> None:
        """snapshots/<commit>/<file> -> ../../blobs/<etag>, relative, as huggingface_hub makes it."""
        os.makedirs(snapshot, exist_ok=True)
        link = os.path.join(snapshot, filename)
        if os.path.realpath(link) == os.path.realpath(blob):
            return
        tmp = f"{link}.{os.getpid()}.tmp"
        try:
            os.symlink(os.path.relpath(blob, snapshot), tmp)
        except OSError:  # no symlinks here: a copy
            shutil.copyfile(blob, tmp)
        os.replace(tmp, link)

    # ------------------------------------------------------------------------------------------------ requests

    def _info(self, repo_id: str, revision: str, filename: str, label: str, required: bool) -> FileInfo | None:
        """HEAD the file's resolve URL: its commit, hash, size and download location (None: no such file)."""
        url = f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
        try:
            response = self._retrying(lambda: self._request("HEAD", url, label, follow="same-origin"),
                                      connect_retries=1)
        except _Transient as e:
            if e.connection:
                raise _CannotConnect(e.message) from None
            raise HubError(f"{label}: {self.endpoint} kept failing ({e.message}) after {self.retries + 1} "
                           "attempts; try again later") from None
        response.close()
        if response.status_code == 404:
            if required:
                raise HubError(self._not_found(label, revision, filename, response))
            return None
        if response.status_code in (401, 403):
            raise HubError(f"{label}: access denied by {self.endpoint} (HTTP {response.status_code}); "
                           "a private or gated repo needs HF_TOKEN")
        if response.status_code >= 400:
            raise HubError(f"{label}: {self.endpoint} answered HTTP {response.status_code} for {filename}")
        commit = response.headers.get("X-Repo-Commit", "")
        etag = (response.headers.get("X-Linked-Etag") or response.headers.get("ETag") or "")
        etag = etag.removeprefix("W/").strip('"')
        if not _COMMIT.match(commit):
            raise HubError(f"{label}: {self.endpoint} gave no valid commit for {filename}; is it a Hugging Face hub?")
        if not _ETAG.match(etag):
            raise HubError(f"{label}: {self.endpoint} gave no usable hash (ETag) for {filename}")
        size = response.headers.get("X-Linked-Size") or (None if response.is_redirect
                                                         else response.headers.get("Content-Length"))
        location = urljoin(response.url, response.headers["Location"]) if response.is_redirect else response.url
        self._check_redirect(location)
        return FileInfo(commit, etag, int(size) if size and size.isdigit() else None, location)

    def _not_found(self, label: str, revision: str, filename: str, response) -> str:
        code = response.headers.get("X-Error-Code", "")
        if code == "RevisionNotFound":
            return f"{label}: not found: no revision {revision!r} on {self.endpoint}"
        if code == "EntryNotFound":
            return f"{label}: not found: the repo has no {filename} at {revision}"
        return f"{label}: not found on {self.endpoint} (check the name; private or gated repos need HF_TOKEN)"

    def _headers(self, url: str) -> dict:
        """The token goes to the endpoint's own origin only, never to a CDN it redirects to."""
        if self.token and _origin(url) == self._origin:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def _check_redirect(self, url: str) -> None:
        if urlsplit(url).scheme == "https" or _origin(url) == self._origin:
            return
        parts = urlsplit(url)
        raise HubError(f"refusing a redirect to {parts.scheme}://{parts.netloc}: only https, or the configured "
                       f"endpoint {self.endpoint}")

    def _request(self, method: str, url: str, label: str, follow: str, headers: dict | None = None,
                 stream: bool = False) -> requests.Response:
        """One request, redirects followed by hand: `follow` is "same-origin" (as when the hub moved a repo;
        a HEAD stops at the redirect to another host, the file storage, whose response carries the metadata)
        or "all" (to where the bytes are: https, or the configured endpoint)."""
        current = url
        try:
            for _ in range(10):
                sent = {"Accept-Encoding": "identity", **self._headers(current), **(headers or {})}
                response = self._session.request(method, current, headers=sent, allow_redirects=False,
                                                 timeout=self.timeout, stream=stream)
                if not response.is_redirect:
                    break
                target = urljoin(current, response.headers["Location"])
                if follow == "same-origin" and _origin(target) != _origin(current):
                    break
                self._check_redirect(target)
                response.close()
                current = target
            else:
                raise HubError(f"{label}: too many redirects from {url}")
        except _TRANSIENT as e:
            raise _Transient(_describe(e), connection=True) from None
        if response.status_code in _RETRY_STATUS:
            response.close()
            raise _Transient(f"HTTP {response.status_code}", connection=False, delay=_retry_after(response))
        return response

    def _retrying(self, attempt, connect_retries: int | None = None):
        """Call attempt() until it does not fail transiently, waiting backoff * 2**k (or Retry-After)
        between tries; after the last try its _Transient propagates. connect_retries: fewer tries when the
        endpoint cannot be reached at all (so that a cached model is used without a long wait)."""
        tries = 0
        while True:
            try:
                return attempt()
            except _Transient as e:
                limit = self.retries if connect_retries is None or not e.connection else \
                    min(connect_retries, self.retries)
                if tries >= limit:
                    raise
                time.sleep(min(e.delay if e.delay is not None else self.backoff * 2 ** tries, 60.0))
                tries += 1

    # -------------------------------------------------------------------------------------------- downloading

    def _fetch(self, repo_id: str, filename: str, info: FileInfo, label: str) -> str:
        """The blob of a file, downloaded if missing: checked against its hash before it is renamed in."""
        folder = repo_folder(self.cache_dir, repo_id)
        blob = os.path.join(folder, "blobs", info.etag)
        if os.path.isfile(blob):
            return blob
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        lock = os.path.join(self.cache_dir, ".locks", os.path.basename(folder), info.etag + ".lock")
        with _locked(lock):
            if os.path.isfile(blob):  # another process finished it while we waited
                return blob
            partial = blob + ".incomplete"
            try:  # each attempt continues where the last one stopped
                self._retrying(lambda: self._download(info, partial, filename, label))
            except _Transient as e:
                raise _Interrupted(f"{label}: downloading {filename} failed ({e.message}) after "
                                   f"{self.retries + 1} attempts; run again to resume") from None
            _verify(partial, info, filename, label)
            os.replace(partial, blob)
        return blob

    def _download(self, info: FileInfo, partial: str, filename: str, label: str) -> None:
        """GET the bytes into `partial`, continuing what is there with a Range request."""
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        if info.size is not None and have > info.size:
            os.remove(partial)
            have = 0
        if info.size is not None and have == info.size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = self._request("GET", info.url, label, follow="all", headers=headers, stream=True)
        with response:
            if response.status_code == 404:
                raise HubError(f"{label}: {filename} is gone from its storage (HTTP 404)")
            if response.status_code == 416 and have:  # nothing left to send: the file is whole
                return
            if response.status_code >= 400:
                raise HubError(f"{label}: downloading {filename}: HTTP {response.status_code}")
            if have and response.status_code != 206:  # the server ignored the Range: start again
                have = 0
            total = info.size or (have + int(response.headers.get("Content-Length", 0)) or None)
            bar = Progress(filename, total, enabled=self._show_progress(total), done=have)
            try:
                with open(partial, "ab" if have else "wb") as f:
                    for chunk in response.iter_content(_NET_CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except _TRANSIENT as e:
                raise _Transient(f"connection lost: {_describe(e)}", connection=False) from None
            finally:
                bar.close()

    def _show_progress(self, total: int | None) -> bool:
        if self.progress is not None:
            return self.progress and (total or 0) >= 10 * _CHUNK
        return (total or 0) >= 10 * _CHUNK and sys.stderr.isatty()

    # ------------------------------------------------------------------------------------------------- listing

    def cached(self) -> list["CachedModel"]:
        """What the cache holds: one entry per repo, with its revisions and size on disk."""
        models = []
        if not os.path.isdir(self.cache_dir):
            return models
        for entry in sorted(os.listdir(self.cache_dir)):
            if not entry.startswith("models--"):
                continue
            folder = os.path.join(self.cache_dir, entry)
            blobs = os.path.join(folder, "blobs")
            size = sum(os.path.getsize(os.path.join(blobs, b)) for b in os.listdir(blobs)) \
                if os.path.isdir(blobs) else 0
            refs = {}
            refs_dir = os.path.join(folder, "refs")
            for root, _, names in os.walk(refs_dir):
                for ref in names:
                    with open(os.path.join(root, ref), encoding="utf-8") as f:
                        refs[os.path.relpath(os.path.join(root, ref), refs_dir)] = f.read().strip()
            snapshots_dir = os.path.join(folder, "snapshots")
            snapshots = sorted(os.listdir(snapshots_dir)) if os.path.isdir(snapshots_dir) else []
            models.append(CachedModel(entry.removeprefix("models--").replace("--", "/"), folder, size, refs,
                                      snapshots))
        return models


@dataclass
class CachedModel:
    repo_id: str
    path: str
    size: int  # bytes of its blobs
    refs: dict[str, str]  # revision name -> commit
    snapshots: list[str]  # commits


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, (parts.hostname or "").lower(), port


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


def _describe(error: Exception) -> str:
    """A short reason for a network failure (requests' own messages run to several nested reprs)."""
    text = str(error)
    for marker, reason in (("Failed to resolve", "could not resolve the host name"),
                           ("Name or service not known", "could not resolve the host name"),
                           ("Connection refused", "connection refused"),
                           ("Network is unreachable", "network unreachable"),
                           ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
                           ("IncompleteRead", "the connection closed early"),
                           ("Connection reset", "connection reset")):
        if marker in text:
            return reason
    if isinstance(error, requests.Timeout):
        return "timed out"
    return error.__class__.__name__


def _verify(path: str, info: FileInfo, filename: str, label: str) -> None:
    """Check the size and the hash the hub announced; a mismatch deletes the file."""
    size = os.path.getsize(path)
    if len(info.etag) == 64:
        digest = hashlib.sha256()
    else:  # git's blob hash, which the hub gives for small files
        digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    if (info.size is not None and size != info.size) or digest.hexdigest() != info.etag:
        os.remove(path)
        what = f"{size} bytes, expected {info.size}" if info.size is not None and size != info.size \
            else f"hash {digest.hexdigest()[:16]}..., expected {info.etag[:16]}..."
        raise HubError(f"{label}: {filename} arrived corrupt ({what}); nothing was kept, "
                                "run again to download it anew")


@contextmanager
def _locked(path: str):
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


class Progress:
    """A one-line progress bar on stderr: bytes, rate and time left; nothing when disabled."""

    def __init__(self, label: str, total: int | None, enabled: bool, done: int = 0, stream=None):
        self.label, self.total, self.enabled, self.done = label, total, enabled, done
        self.stream = stream or sys.stderr
        self.start, self.start_done, self.last = time.monotonic(), done, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = (self.done - self.start_done) / max(now - self.start, 1e-6)
        mb = 1e6
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else 0
            text = (f"{self.label}: {self.done / mb:8.1f} / {self.total / mb:.1f} MB  {rate / mb:6.1f} MB/s  "
                    f"{int(left) // 60}:{int(left) % 60:02d} left")
        else:
            text = f"{self.label}: {self.done / mb:8.1f} MB  {rate / mb:6.1f} MB/s"
        self.stream.write("\r" + text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
