"""Fetching GPT-2 checkpoints from the Hugging Face hub into the hub's own cache (npgpt.hf_cache), safely and
resumably.

Each file is asked for with HEAD `{endpoint}/{repo}/resolve/{revision}/{file}`, which answers the commit
(X-Repo-Commit), the file's hash (X-Linked-Etag or ETag), its size and, for large files, a redirect to where the
bytes are. The bytes go to `blobs/<etag>.incomplete` (resumed with a Range request after an interruption),
are checked against the hash, and only then renamed into place. A lock per blob keeps two processes from
writing the same file. Transient failures (connection errors, timeouts, 5xx, 429) are retried with backoff.
A cached file that fails its check (npgpt.hf_cache) is fetched again.

When the hub cannot say whether there is anything newer (HF_HUB_OFFLINE is set, or after one quick retry it is
still unreachable, failing with 5xx or 429, or silent), a cached snapshot is used as it is, unchecked.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import requests

from .config import GPT2Config
from .errors import HubError, NpgptError, WeightsError
from .hf_cache import (CONFIG, COMMIT_PATTERN, ETAG_PATTERN, HASH_CHUNK, WEIGHTS, WEIGHTS_INDEX, CachedModel,
                       blob_intact, blob_path, cache_dir_from_env, cache_errors, check_filename, check_revision,
                       disk_error, env_flag, file_hash, find_snapshot, intact_by_name, is_marked_missing, link,
                       list_cached, lock_path, locked, mark_missing, remove_file, remove_repo, repo_folder,
                       repo_id_for, snapshot_path, write_ref)
from .progress import Progress
from .weights import shard_names

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")

_RETRY_STATUS = {429, 500, 502, 503, 504}
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_NET_CHUNK = 1 << 16  # for reading the network: what arrived before a cut is kept, but for < 64 kB
# With a cached copy to fall back on, the hub is asked with less patience: one retry, soon, and short timeouts.
_QUICK_WAIT = 0.5  # seconds before that retry (a longer Retry-After is not waited for)
_QUICK_TIMEOUT = 5.0  # seconds to connect, and to wait for an answer to a HEAD


class _Transient(Exception):
    """A failure worth another try: a lost or refused connection, a timeout, HTTP 5xx or 429.
    progressed: bytes arrived before it (a download that gets somewhere is given its retries anew)."""

    def __init__(self, message: str, connection: bool, delay: float | None = None, progressed: bool = False):
        super().__init__(message)
        self.message, self.connection, self.delay, self.progressed = message, connection, delay, progressed


class _Unavailable(Exception):
    """The hub gave no answer (unreachable, or failing even after a retry): a cached copy may serve instead."""


class _Interrupted(HubError):
    """A download that kept failing part way: its .incomplete file stays, to be resumed next time."""


# ----------------------------------------------------------------------------------------------------- the client


@dataclass
class FileInfo:
    commit: str  # the commit the revision resolves to
    etag: str  # sha256 (large files) or git blob sha1 of the content
    size: int | None
    url: str = field(repr=False)  # where to GET the bytes (after the hub's redirect; its query may be a signature)


@dataclass
class _Job:
    """What one snapshot() is about, handed to each step: the repo, its name in messages, and whether a cached
    snapshot could serve instead (then the hub is not waited for long)."""

    repo_id: str
    label: str
    folder: str
    quick: bool


@dataclass
class Hub:
    """A client for one endpoint and one cache. `Hub.from_env()` reads the Hugging Face variables."""

    cache_dir: str
    endpoint: str = DEFAULT_ENDPOINT  # a login in it (user:password@) is taken out and kept apart, unprinted
    token: str | None = field(default=None, repr=False)
    offline: bool = False
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    retries: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: tuple[float, float] = (10.0, 60.0)  # connect, read

    def __post_init__(self):
        self.endpoint, self._login = _split_login(self.endpoint.rstrip("/"))
        if not _is_http_url(self.endpoint):
            raise HubError(f"HF_ENDPOINT must be an http(s) URL, got {self.endpoint!r}")
        self._origin = _origin(self.endpoint)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "npgpt"

    @classmethod
    def from_env(cls, **overrides) -> "Hub":
        settings = dict(cache_dir=cache_dir_from_env(), endpoint=os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT,
                        token=os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None,
                        offline=env_flag("HF_HUB_OFFLINE"))
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)

    def cached(self) -> list[CachedModel]:
        return list_cached(self.cache_dir)

    # ------------------------------------------------------------------------------------------------- snapshot

    def snapshot(self, name: str, revision: str | None = None) -> str:
        """The local directory of `name` at `revision` (default main), downloading what is missing.

        Fetches config.json (checked to be a GPT-2's before anything large is fetched), model.safetensors
        (or its shards) and the tokenizer files the repo has, again for any cached file that fails its check.
        Offline, or when the hub gives no answer, a cached snapshot is used.
        """
        repo_id = repo_id_for(name)
        revision = check_revision(revision or "main")
        label = name if name == repo_id else f"{name} ({repo_id})"
        folder = repo_folder(self.cache_dir, repo_id)
        cached = find_snapshot(folder, revision)
        if cached and (self.offline or COMMIT_PATTERN.match(revision)):  # a commit never changes
            return cached
        if self.offline:
            at = "" if revision == "main" else f" at revision {revision}"
            raise HubError(f"{label}{at} is not in the cache ({self.cache_dir}) and HF_HUB_OFFLINE is set; "
                           f"download it first with: npgpt download {name}")
        existed = os.path.isdir(folder)
        try:
            with cache_errors(label, self.cache_dir):
                return self._download_snapshot(_Job(repo_id, label, folder, quick=cached is not None), revision)
        except _Unavailable as e:
            if cached:  # the hub cannot tell whether there is anything newer: what is cached will do
                return cached
            if not existed:
                remove_repo(folder)
            raise HubError(f"{label}: cannot reach {self.endpoint} ({e}) and the model is not cached; offline, use "
                           "a local directory with config.json and model.safetensors (--model path/to/dir, "
                           "npgpt.load('path/to/dir')), a mirror (HF_ENDPOINT), or an untrained model saved with "
                           "python -c \"import npgpt; npgpt.GPT2.random('gpt2').save('gpt2-random')\" (then "
                           "--model gpt2-random)") from None
        except _Interrupted:
            raise  # its .incomplete file stays, to be resumed
        except NpgptError:
            if not existed:  # leave nothing half-made behind
                remove_repo(folder)
            raise

    def _download_snapshot(self, job: _Job, revision: str) -> str:
        config = self._info(job, revision, CONFIG, required=True)
        commit = config.commit
        snapshot = snapshot_path(job.folder, commit)
        files = {CONFIG: self._fetch(job, CONFIG, config)}
        GPT2Config.from_json(files[CONFIG])  # a GPT-2? (asked before fetching gigabytes)
        weights, fetched = self._weight_files(job, commit, snapshot)
        files.update(fetched)
        for filename in weights + [f for f in TOKENIZER_FILES if f not in weights]:
            if filename not in files:
                path = self._file(job, commit, snapshot, filename, required=filename in weights)
                if path is not None:
                    files[filename] = path
        for filename, blob in files.items():
            link(snapshot, filename, blob)
        if revision != commit:
            write_ref(job.folder, revision, commit)
        return snapshot

    def _file(self, job: _Job, commit: str, snapshot: str, filename: str, required: bool) -> str | None:
        """One file of the snapshot: the cached one if it checks out, else downloaded (None: the repo has none)."""
        cached = os.path.join(snapshot, filename)
        if intact_by_name(cached):  # small, and its hash is its name: no need to ask the hub
            return cached
        if is_marked_missing(job.folder, commit, filename):
            return None
        info = self._info(job, commit, filename, required=required)
        if info is None:
            mark_missing(job.folder, commit, filename)
            return None
        if blob_intact(cached, info.etag, info.size):  # a large file of the right size (or a copy, not a link)
            return cached
        return self._fetch(job, filename, info)

    def _weight_files(self, job: _Job, commit: str, snapshot: str) -> tuple[list[str], dict]:
        """The weight files to have (model.safetensors, or the index and its shards), and those fetched here."""
        if os.path.isfile(os.path.join(snapshot, WEIGHTS)):
            return [WEIGHTS], {}  # checked (and fetched again if need be) with the other files
        fetched = {}
        index = os.path.join(snapshot, WEIGHTS_INDEX)
        if not intact_by_name(index):
            info = self._info(job, commit, WEIGHTS, required=False)
            if info is not None:
                return [WEIGHTS], {WEIGHTS: self._fetch(job, WEIGHTS, info)}
            info = self._info(job, commit, WEIGHTS_INDEX, required=False)
            if info is None:
                raise HubError(f"{job.label}: the repo has no {WEIGHTS}; npgpt loads only safetensors "
                               f"(never pickle files such as pytorch_model.bin)")
            index = fetched[WEIGHTS_INDEX] = self._fetch(job, WEIGHTS_INDEX, info)
        try:
            shards = [check_filename(s) for s in shard_names(index)]
        except WeightsError as e:
            raise HubError(f"{job.label}: {e}") from None
        return [WEIGHTS_INDEX] + shards, fetched

    # ------------------------------------------------------------------------------------------------ requests

    def _info(self, job: _Job, revision: str, filename: str, required: bool) -> FileInfo | None:
        """HEAD the file's resolve URL: its commit, hash, size and download location (None: no such file).
        Raises _Unavailable when the hub cannot be reached, or, if a cached snapshot could serve, gives no
        answer after one quick retry."""
        url = f"{self.endpoint}/{job.repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
        if job.quick:
            retries, max_wait = min(1, self.retries), _QUICK_WAIT
            timeout = (min(self.timeout[0], _QUICK_TIMEOUT), min(self.timeout[1], _QUICK_TIMEOUT))
        else:
            retries, max_wait, timeout = self.retries, 60.0, self.timeout
        try:
            response = self._retrying(
                lambda: self._request("HEAD", url, job.label, follow="same-origin", timeout=timeout),
                retries=retries, connect_retries=1, max_wait=max_wait)
        except _Transient as e:
            if e.connection or job.quick:
                raise _Unavailable(e.message) from None
            raise HubError(f"{job.label}: {self.endpoint} kept failing ({e.message}) after {retries + 1} "
                           "attempts; try again later") from None
        response.close()
        if response.status_code == 404:
            if required:
                raise HubError(self._not_found(job.label, revision, filename, response))
            return None
        if response.status_code in (401, 403):
            raise HubError(f"{job.label}: access denied by {self.endpoint} (HTTP {response.status_code}); "
                           "a private or gated repo needs HF_TOKEN")
        if response.status_code >= 400:
            raise HubError(f"{job.label}: {self.endpoint} answered HTTP {response.status_code} for {filename}")
        return self._file_info(response, filename, job.label)

    def _file_info(self, response: requests.Response, filename: str, label: str) -> FileInfo:
        commit = response.headers.get("X-Repo-Commit", "")
        etag = (response.headers.get("X-Linked-Etag") or response.headers.get("ETag") or "")
        etag = etag.removeprefix("W/").strip('"')
        if not COMMIT_PATTERN.match(commit):
            raise HubError(f"{label}: {self.endpoint} gave no valid commit for {filename}; is it a Hugging Face hub?")
        if not ETAG_PATTERN.match(etag):
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
        """Credentials go to the endpoint's own origin only, never to a CDN it redirects to: a login given in
        HF_ENDPOINT (user:password@) as Basic auth, as requests would send it, else the token."""
        if _origin(url) != self._origin:
            return {}
        if self._login:
            return {"Authorization": "Basic " + base64.b64encode(":".join(self._login).encode()).decode()}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def _check_redirect(self, url: str) -> None:
        if urlsplit(url).scheme == "https" or _origin(url) == self._origin:
            return
        raise HubError(f"refusing a redirect to {_shown(url, path=False)}: only https, or the configured "
                       f"endpoint {self.endpoint}")

    def _request(self, method: str, url: str, label: str, follow: str, headers: dict | None = None,
                 stream: bool = False, timeout: tuple[float, float] | None = None) -> requests.Response:
        """One request, redirects followed by hand: `follow` is "same-origin" (as when the hub moved a repo;
        a HEAD stops at the redirect to another host, the file storage, whose response carries the metadata)
        or "all" (to where the bytes are: https, or the configured endpoint)."""
        current = url
        try:
            for _ in range(10):
                sent = {"Accept-Encoding": "identity", **self._headers(current), **(headers or {})}
                response = self._session.request(method, current, headers=sent, allow_redirects=False,
                                                 timeout=timeout or self.timeout, stream=stream)
                if not response.is_redirect:
                    break
                target = urljoin(current, response.headers["Location"])
                if follow == "same-origin" and _origin(target) != _origin(current):
                    break
                self._check_redirect(target)
                response.close()
                current = target
            else:
                raise HubError(f"{label}: too many redirects from {_shown(url)}")
        except _TRANSIENT as e:
            raise _Transient(_describe(e), connection=True) from None
        if response.status_code in _RETRY_STATUS:
            response.close()
            raise _Transient(f"HTTP {response.status_code}", connection=False, delay=_retry_after(response))
        return response

    def _retrying(self, attempt, retries: int, connect_retries: int | None = None, max_wait: float = 60.0):
        """Call attempt() until it does not fail transiently, waiting backoff * 2**k (or Retry-After), at most
        max_wait, between tries; after `retries` retries its _Transient propagates. connect_retries: fewer
        when the endpoint cannot be reached at all (nobody is there: waiting longer rarely helps). A failure
        after progress (bytes arrived) starts the count again: only failures in a row that get nowhere use
        the retries up, and those cannot go on for ever, since the file only grows up to its size."""
        tries = 0
        while True:
            try:
                return attempt()
            except _Transient as e:
                if e.progressed:
                    tries = 0
                limit = retries if connect_retries is None or not e.connection else min(connect_retries, retries)
                if tries >= limit:
                    raise
                time.sleep(min(e.delay if e.delay is not None else self.backoff * 2 ** tries, max_wait))
                tries += 1

    # -------------------------------------------------------------------------------------------- downloading

    def _fetch(self, job: _Job, filename: str, info: FileInfo) -> str:
        """The blob of a file, downloaded unless an intact one is cached: checked against its hash before it
        is renamed in (over a damaged one, if any: links to it stay valid)."""
        blob = blob_path(job.folder, info.etag)
        if blob_intact(blob, info.etag, info.size):
            return blob
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with locked(lock_path(job.folder, info.etag)):
            if blob_intact(blob, info.etag, info.size):  # another process fetched it while we waited
                return blob
            partial = blob + ".incomplete"
            try:  # each attempt continues where the last one stopped
                self._retrying(lambda: self._download(info, partial, filename, job.label), retries=self.retries)
            except _Transient as e:
                raise _Interrupted(f"{job.label}: downloading {filename} kept failing ({e.message}); what "
                                   "arrived is kept: run again to resume") from None
            except requests.RequestException:
                raise  # the network's OSErrors, not the disk's
            except OSError as e:
                # The partial file could be resumed, but it is removed: when the disk is full, it is what
                # filled it, the space is wanted back now, and the cache may well be moved elsewhere.
                remove_file(partial)
                raise disk_error(job.label, e, partial, info.size) from None
            _verify(partial, info, filename, job.label)
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
        start = have
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
                grew = os.path.getsize(partial) > start  # not so if the server ignored the Range and cut again
                raise _Transient(f"connection lost: {_describe(e)}", connection=False, progressed=grew) from None
            finally:
                bar.close()

    def _show_progress(self, total: int | None) -> bool:
        if self.progress is not None:
            return self.progress and (total or 0) >= 10 * HASH_CHUNK
        return (total or 0) >= 10 * HASH_CHUNK and sys.stderr.isatty()


# ---------------------------------------------------------------------------------------------------- helpers


def _split_login(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its `user:password@`, and that login: kept apart so that it is never printed."""
    parts = urlsplit(url)
    login, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = login.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def _shown(url: str, path: bool = True) -> str:
    """A URL fit for a message: no login, no query (a file store's query is a signature)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path if path else "", "", ""))


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # a malformed port fails here, rather than on the first request
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
    """Check a downloaded file's size and hash against what the hub announced; a mismatch deletes the file."""
    size = os.path.getsize(path)
    digest = file_hash(path, info.etag)
    if (info.size is not None and size != info.size) or digest != info.etag:
        os.remove(path)
        what = f"{size} bytes, expected {info.size}" if info.size is not None and size != info.size \
            else f"hash {digest[:16]}..., expected {info.etag[:16]}..."
        raise HubError(f"{label}: {filename} arrived corrupt ({what}); nothing was kept, "
                       "run again to download it anew")
