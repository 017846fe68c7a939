"""A Hugging Face hub look-alike on 127.0.0.1, for the download tests.

It answers what huggingface_hub and npgpt ask: HEAD/GET `/{repo}/resolve/{revision}/{file}` with X-Repo-Commit
and an ETag (git blob sha1) for small files, or a 302 to a file URL with X-Linked-Etag (sha256) and
X-Linked-Size for large ("LFS") files; GET `/cdn/{sha256}` with Range support. Faults can be switched on:
connections cut part way through a file, HTTP errors before success, corrupt bytes, slow bytes, a hub that
answers too late, and a redirect to anywhere. Every request is logged with its headers.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 10_000


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, dict[str, bytes]]  # commit -> {filename: bytes}
    refs: dict[str, str]  # branch or tag -> commit


@dataclass
class Faults:
    cut_after: dict[str, list[int]] = field(default_factory=dict)  # sha256 -> bytes sent by each GET before its cut
    errors: list[int] = field(default_factory=list)  # statuses answered (one each, in order) before real answers
    retry_after: str | None = None  # Retry-After header sent with those errors
    corrupt: set[str] = field(default_factory=set)  # sha256 of files whose bytes are served damaged
    slow: float = 0.0  # seconds between 64 kB chunks of file bytes
    stall: float = 0.0  # seconds the hub (not the file store) waits before it answers anything
    lfs_location: str | None = None  # redirect large files here instead of our own /cdn/ (format: {sha})
    etag_override: str | None = None  # announce this ETag for every file
    no_range: bool = False  # ignore Range headers


@dataclass
class Logged:
    method: str
    path: str
    headers: dict
    server: str  # "hub" or "cdn"


class HubServer:
    """The hub on http://127.0.0.1:PORT; with tls=True, also a file store on https://localhost:PORT2."""

    def __init__(self, tls_dir: str | None = None):
        self.repos: dict[str, Repo] = {}
        self.moved: dict[str, str] = {}  # old repo id -> new repo id (answered with a relative redirect)
        self.blobs: dict[str, bytes] = {}
        self.faults = Faults()
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self.hub = self._serve("hub")
        self.endpoint = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_base = self.endpoint
        self.cdn = None
        if tls_dir:
            cert, key = make_certificate(tls_dir)
            self.cdn = self._serve("cdn")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.cdn.socket = context.wrap_socket(self.cdn.socket, server_side=True)
            self.cdn_base = f"https://localhost:{self.cdn.server_address[1]}"
            self.ca_bundle = cert

    def _serve(self, name: str) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, name))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server

    def close(self):
        for server in (self.hub, self.cdn):
            if server:
                server.shutdown()
                server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes], commit: str | None = None, refs=("main",)) -> str:
        commit = commit or hashlib.sha1(repo_id.encode() + str(len(self.repos)).encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo({}, {}))
        repo.files[commit] = dict(files)
        for ref in refs:
            repo.refs[ref] = commit
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def requests(self, method: str | None = None, contains: str = "", server: str | None = None) -> list[Logged]:
        return [r for r in self.log if (method is None or r.method == method) and contains in r.path
                and (server is None or r.server == server)]


def _handler(hub: HubServer, name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._answer(head=True)

        def do_GET(self):
            self._answer(head=False)

        def _answer(self, head: bool):
            with hub._lock:
                hub.log.append(Logged(self.command, self.path, dict(self.headers), name))
                error = hub.faults.errors.pop(0) if hub.faults.errors else None
            if name == "hub" and hub.faults.stall:
                time.sleep(hub.faults.stall)
            if error:
                extra = {"Retry-After": hub.faults.retry_after} if hub.faults.retry_after else {}
                return self._send(error, b"", head, extra)
            if self.path.startswith("/cdn/"):
                return self._file(self.path[5:], head)
            match = re.match(r"^/(.+)/resolve/([^/]+)/([^/]+)$", self.path)
            if not match:
                return self._send(404, b"", head, {"X-Error-Code": "RepoNotFound"})
            repo_id, revision, filename = match.groups()
            revision = revision.replace("%2F", "/")
            if repo_id in hub.moved:
                target = f"/{hub.moved[repo_id]}/resolve/{match.group(2)}/{filename}"
                return self._send(307, b"", head, {"Location": target})
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._send(404, b"", head, {"X-Error-Code": "RepoNotFound"})
            commit = repo.refs.get(revision, revision if revision in repo.files else None)
            if commit is None:
                return self._send(404, b"", head, {"X-Error-Code": "RevisionNotFound"})
            data = repo.files[commit].get(filename)
            if data is None:
                return self._send(404, b"", head, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            headers = {"X-Repo-Commit": commit}
            if len(data) > LFS_THRESHOLD:
                sha = hashlib.sha256(data).hexdigest()
                location = (hub.faults.lfs_location or hub.cdn_base + "/cdn/{sha}").format(sha=sha)
                headers.update({"Location": location, "X-Linked-Size": str(len(data)),
                                "X-Linked-Etag": f'"{hub.faults.etag_override or sha}"', "ETag": '"lfs-pointer"'})
                return self._send(302, b"", head, headers)
            headers["ETag"] = f'"{hub.faults.etag_override or git_blob_sha1(data)}"'
            return self._send(200, data, head, headers)

        def _file(self, sha: str, head: bool):
            data = hub.blobs.get(sha)
            if data is None:
                return self._send(404, b"", head)
            if sha in hub.faults.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            start = 0
            range_header = self.headers.get("Range")
            status, headers = 200, {}
            if range_header and not hub.faults.no_range:
                start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
                if start >= len(data):
                    return self._send(416, b"", head, {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            with hub._lock:
                cuts = hub.faults.cut_after.get(sha)
                cut = cuts.pop(0) if cuts and not head else None
            if cut is not None:  # announce everything, send part, hang up
                self._send_head(status, len(body), headers)
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._send(status, body, head, headers)

        def _send_head(self, status, length, headers):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _send(self, status, body, head, headers=None):
            self._send_head(status, len(body), headers or {})
            if head or not body:
                return
            if hub.faults.slow:
                for i in range(0, len(body), 65536):
                    self.wfile.write(body[i:i + 65536])
                    self.wfile.flush()
                    time.sleep(hub.faults.slow)
            else:
                self.wfile.write(body)

    return Handler


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA), made with the openssl command."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key
