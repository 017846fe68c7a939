"""`npgpt serve`: an OpenAI-compatible HTTP server for legacy completions, with the standard library only.

    POST /v1/completions        OpenAI's legacy completions (npgpt.openai_api); "stream": true sends server-sent events
    GET  /v1/models             the served model, in OpenAI's list shape (GET /v1/models/NAME: that model)
    GET  /health                {"status": "ok"} (no API key needed)
    POST /v1/chat/completions   404: GPT-2 has no chat format

One thread per connection (http.server.ThreadingHTTPServer) turns a request into a job of the Scheduler, whose one
decoding thread batches the rows of every job together; this module only translates HTTP to jobs and back. Every
error is OpenAI's error object with its status; a failure inside npgpt is logged with its traceback and answered
500, and the server goes on. One line per request (client, method, path, status, tokens, milliseconds) is logged
on stderr. On close (Ctrl-C, SIGTERM), each request under way is answered 503, or its stream ends on an error
event, before the connections close (Server.close).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from . import __version__, openai_api
from .errors import BusyError, NpgptError, SettingsError
from .openai_api import ApiError, error_body
from .scheduler import GATHER, Scheduler

MAX_BODY = 1 << 20  # bytes of a request body (1 MiB): larger ones are refused before they are read
IDLE_TIMEOUT = 120  # seconds a connection may wait for a request, or for a client to take a chunk
LINGER = 2.0  # seconds to read and drop a refused body, so that its sender gets the answer (not a reset)
SHUTDOWN_WAIT = 2.0  # seconds the requests under way have, at close, to send their last answer (a 503, an error
# event): then their connections are closed, so that a client that stopped reading cannot hold the exit
SHUTTING_DOWN = "the server is shutting down"


class ClientGone(Exception):
    """The client closed its connection: its job is cancelled, nothing more is sent."""


class Server:
    """An OpenAI-compatible server for `model`, with its own Scheduler unless one is given (which its caller
    then starts and closes).

        with Server(model, port=0, model_name="gpt2") as server:   # port 0: any free port
            requests.post(server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 5})

    model_name: what clients call the model ("model" in requests, /v1/models); default model.name.
    api_key: when set, /v1/ routes need the header `Authorization: Bearer KEY`.
    log: where the request lines and tracebacks go (a text stream; default sys.stderr).
    """

    def __init__(self, model, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 model_name: str | None = None, scheduler=None, max_rows: int = 16, max_waiting: int = 64,
                 gather: float = GATHER, max_body: int = MAX_BODY, log=None):
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise SettingsError(f"port must be an integer from 0 to 65535 (0: any free port), got {port!r}")
        self.model, self.api_key, self.max_body, self._log = model, api_key, max_body, log
        self.model_name = model_name or model.name or "gpt2"
        self.created = int(time.time())
        self.scheduler = scheduler if scheduler is not None else Scheduler(model, max_rows=max_rows,
                                                                           max_waiting=max_waiting, gather=gather)
        self._owns_scheduler = scheduler is None
        self._jobs, self._lock, self._log_lock = set(), threading.Lock(), threading.Lock()
        self._answering = 0  # requests being handled (not the connections waiting for one)
        self._answered = threading.Condition(self._lock)  # notified as each of them is answered
        self.closing = False  # close() has begun: a new job is refused (503), each answer closes its connection
        try:
            self.httpd = _HTTPServer((host, port), self)
        except OSError as e:
            raise NpgptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._thread = None

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "Server":
        if self._owns_scheduler:
            self.scheduler.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="npgpt-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting; end the jobs under way with a 'shutting down' error, which their requests get (a 503,
        or an error event that ends the stream); then close the connections, wait for their threads and close
        the scheduler (when it is this server's own).

        The order matters: a connection closed before its request's answer was written cuts its client off with
        nothing (curl: 'Empty reply from server'), so the jobs end first, their threads get SHUTDOWN_WAIT
        seconds to write that answer, and only then are the connections closed, which also frees a thread
        blocked on a client that stopped reading."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._end_jobs()
        if not self._wait_for_answers(SHUTDOWN_WAIT):
            self.log(f"npgpt serve: {self._answering} request(s) had not sent their answer after "
                     f"{SHUTDOWN_WAIT:g} s: their connections are closed")
        self.httpd.close_connections()  # the idle ones, and any whose client would not take its answer in time
        if self._owns_scheduler:
            self.scheduler.close()
        self.httpd.server_close()  # joins the connections' threads

    def _end_jobs(self) -> None:
        """End every job under way with the shutting-down error; no new job is taken (see submit)."""
        with self._lock:
            self.closing = True
            jobs = list(self._jobs)
        for job in jobs:
            job.fail(BusyError(SHUTTING_DOWN))  # its request's thread gets the error now and answers with it

    def _wait_for_answers(self, seconds: float) -> bool:
        """Wait until no request is being handled (True), or `seconds` pass (False)."""
        with self._answered:
            return self._answered.wait_for(lambda: self._answering == 0, timeout=seconds)

    def __enter__(self) -> "Server":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- jobs and the log

    def submit(self, request: openai_api.CompletionRequest):
        """A job for the request, or the ApiError that says why the scheduler refused it."""
        if self.closing:
            raise job_error(BusyError(SHUTTING_DOWN))
        try:
            job = self.scheduler.submit(request.job_prompts(), request.settings)
        except BusyError as e:
            raise ApiError(429, f"the server is busy ({e}); try again shortly", type="server_busy",
                           code="server_busy", headers={"Retry-After": "1"}) from None
        except NpgptError as e:
            raise openai_api.scheduler_error(e) from None
        with self._lock:
            if self.closing:  # close() began while the scheduler took it: _end_jobs did not see it
                job.fail(BusyError(SHUTTING_DOWN))
            self._jobs.add(job)
        return job

    def forget(self, job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def answering(self) -> None:
        """A request is being handled: close() waits (SHUTDOWN_WAIT at most) for its answer."""
        with self._answered:
            self._answering += 1

    def answered(self) -> None:
        with self._answered:
            self._answering -= 1
            self._answered.notify_all()

    @property
    def jobs(self) -> int:
        """Jobs under way (a request being answered)."""
        with self._lock:
            return len(self._jobs)

    def log(self, line: str) -> None:
        stream = self._log or sys.stderr
        with self._log_lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):  # a closed stderr must not take a request down with it
                pass

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "npgpt",
                "max_model_len": self.model.config.n_positions}


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its open connections (to close them at the end) and joins its threads."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # connections waiting to be accepted (socketserver's 5 resets a burst of clients)

    def __init__(self, address, app: Server):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app, self.connections, self._connections_lock = app, set(), threading.Lock()
        self.cut_off = False  # close_connections was called: a write that fails from then on is ours, not the client's
        super().__init__(address, Handler)

    def server_bind(self):  # HTTPServer's looks the host name up (socket.getfqdn), which can take seconds
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every open connection: a thread waiting for the next request on it sees the end and returns (one
        writing to it, an error)."""
        self.cut_off = True
        with self._connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):  # an error outside a request's handling: log it, go on
        self.app.log(f"npgpt serve: error with {client_address[0]}:\n{traceback.format_exc().rstrip()}")


# ------------------------------------------------------------------------------------------------- requests


class Handler(BaseHTTPRequestHandler):
    """One connection: its requests in turn (HTTP/1.1 keep-alive), each routed, answered and logged."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    def version_string(self) -> str:  # the Server header
        return f"npgpt/{__version__}"

    def do_GET(self):
        self.handle_request()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    @property
    def app(self) -> Server:
        return self.server.app

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError):  # the client left between two requests: nothing to answer
            self.close_connection = True

    def handle_request(self) -> None:
        """Route the request and answer it; whatever happens, answer in OpenAI's shape and log one line that
        says what was sent."""
        self.started, self.status, self.tokens, self.note = time.monotonic(), None, None, ""
        self.body_read = False
        self.app.answering()
        try:
            self.answer_request()
        except (ClientGone, ConnectionError, TimeoutError):  # closed, reset, silent for IDLE_TIMEOUT, or cut off
            self.close_connection, self.note = True, self.not_sent_note()
        finally:
            self.log_line()
            if self.close_connection and self.has_unread_body():
                self.linger()
            self.app.answered()

    def answer_request(self) -> None:
        """The answer, or OpenAI's error object; a connection that fails is handle_request's to note."""
        try:
            self.route()
        except ApiError as e:
            self.send_api_error(e)
        except (ClientGone, ConnectionError, TimeoutError):
            raise
        except Exception:  # a bug in npgpt: the traceback goes to the log, never to the client
            self.app.log(f"npgpt serve: error in {self.command} {self.path}:\n{traceback.format_exc().rstrip()}")
            self.note = "internal error, traceback above"
            if self.status is None:
                self.send_json(500, error_body("internal error in npgpt; the server's log has the details",
                                               type="server_error"))
            else:
                self.close_connection = True

    def not_sent_note(self) -> str:
        """The log's note when the connection failed: who closed it and, if an answer was being sent (a 503, an
        error event), that it did not get through."""
        why = "cut off by the server's shutdown" if self.server.cut_off else "client went away"
        return f"not sent, {why}: {self.note}" if self.note else why

    def linger(self) -> None:
        """Close our side, then drop what the client still sends for a moment: closing with unread data would
        reset the connection, and the client could lose the answer (a 413, a 401) before reading it."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER
            self.connection.settimeout(LINGER)
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def route(self) -> None:
        path = urlsplit(self.path).path
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        if path.startswith("/v1/") and self.app.api_key is not None:
            self.check_key()
        if path == "/v1/chat/completions":
            raise ApiError(404, "GPT-2 has no chat format (it continues text): use POST /v1/completions with the "
                                "text to continue as the prompt", code="unsupported_endpoint")
        if path == "/v1/completions":
            self.allow("POST")
            self.completions()
        elif path == "/v1/models":
            self.allow("GET")
            self.send_json(200, {"object": "list", "data": [self.app.model_card()]})
        elif path.startswith("/v1/models/"):
            self.allow("GET")
            name = unquote(path[len("/v1/models/"):])
            if name != self.app.model_name:
                raise ApiError(404, f"model {name!r} is not served here; this server serves "
                                    f"{self.app.model_name!r}", param="model", code="model_not_found")
            self.send_json(200, self.app.model_card())
        elif path == "/health":
            self.allow("GET")
            self.send_json(200, {"status": "ok"})
        else:
            raise ApiError(404, f"no route {path!r}: npgpt serves POST /v1/completions, GET /v1/models and "
                                "GET /health", code="unknown_route")

    def allow(self, method: str) -> None:
        allowed = [method, "HEAD"] if method == "GET" else [method]
        if self.command not in allowed:
            raise ApiError(405, f"{self.command} is not allowed on {urlsplit(self.path).path}; use {method}",
                           code="method_not_allowed", headers={"Allow": ", ".join(allowed)})

    def check_key(self) -> None:
        scheme, _, key = self.headers.get("Authorization", "").partition(" ")
        given = key.strip().encode("latin-1", "replace")  # the header's bytes, as they came
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.app.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def read_json(self):
        """The request body as JSON; its size is checked (Content-Length) before anything is read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the body with a Content-Length header (chunked bodies are not accepted)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "the request needs a Content-Length header and a JSON body")
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, f"Content-Length must be a byte count, got {length[:40]!r}") from None
        if size > self.app.max_body:
            raise ApiError(413, f"the request body is {size:,} bytes; the limit is {self.app.max_body:,}",
                           code="request_too_large")
        data = self.rfile.read(size)
        if len(data) < size:
            raise ClientGone()
        self.body_read = True
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not UTF-8 text") from None
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply") from None
        except ValueError as e:
            where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            raise ApiError(400, f"the request body is not valid JSON: {getattr(e, 'msg', e)}{where}") from None

    # ------------------------------------------------------------------------------------------ completions

    def completions(self) -> None:
        app = self.app
        request = openai_api.parse_completion_request(self.read_json(), app.model, app.model_name)
        job = app.submit(request)
        done = False
        try:  # the prompts' echo is computed here while the scheduler decodes
            echoes = [openai_api.echo_prompt(app.model, ids, request.logprobs) for ids in request.prompts] \
                if request.echo else None
            if request.stream:
                self.stream(request, job, echoes)
            else:
                self.answer(request, job, echoes)
            done = True
        finally:
            if not done:
                job.cancel()  # its rows leave the batch at the next step
            app.forget(job)

    def answer(self, request, job, echoes) -> None:
        """The whole answer at once; a client that leaves while it is generated cancels the job."""
        try:
            for _ in job.steps():
                if self.client_gone():
                    raise ClientGone()
            rows = job.wait()
        except NpgptError as e:
            raise job_error(e) from None
        body = openai_api.completion_body(request, rows, echoes)
        self.tokens = body["usage"]
        self.send_json(200, body)

    def stream(self, request, job, echoes) -> None:
        """Server-sent events: one chunk per piece of text (and token, with logprobs), then `data: [DONE]`."""
        chunks = openai_api.CompletionStream(request, echoes)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks.start():
                self.send_event(chunk)
            for step in job.steps():
                chunk = chunks.step(step)
                if chunk is not None:
                    self.send_event(chunk)
            rows = job.wait()
            for chunk in chunks.end(rows):
                self.send_event(chunk)
            self.tokens = openai_api.usage(request, rows)
            self.send_event("[DONE]")
        except (ConnectionError, TimeoutError):  # the client closed the connection (or stopped reading)
            raise ClientGone() from None
        except Exception as e:  # after the headers: the error is the stream's last event
            if isinstance(e, NpgptError):
                failure = job_error(e)
                self.note, error = failure.message, failure.body()
            else:
                self.app.log(f"npgpt serve: error while streaming:\n{traceback.format_exc().rstrip()}")
                self.note, error = "internal error, traceback above", error_body(
                    "internal error in npgpt; the server's log has the details", type="server_error")
            self.close_connection = True
            self.send_event(error)
        self.write_chunk(b"")  # the end of the chunked body

    def send_event(self, data) -> None:
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        self.write_chunk(f"data: {text}\n\n".encode())

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """Has the client closed its side? (Readable with nothing to read: the end of the stream.)"""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ----------------------------------------------------------------------------------------- responses

    def send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.has_unread_body() or self.app.closing:  # an unread body would be read as the next request
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_api_error(self, e: ApiError) -> None:
        if self.status is not None:  # the answer had begun: nothing more can be said on this connection
            self.close_connection = True
            return
        self.note = e.message
        self.send_json(e.status, e.body(), e.headers)

    def has_unread_body(self) -> bool:
        if self.body_read or not hasattr(self, "headers") or self.headers is None:
            return False
        return self.headers.get("Content-Length", "0") not in ("", "0") or "Transfer-Encoding" in self.headers

    def send_response(self, code, message=None):
        self.status = code
        super().send_response(code, message)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a malformed request line, headers too long, an unknown method), in
        OpenAI's shape."""
        self.started, self.tokens, self.note, self.body_read = time.monotonic(), None, message or "", False
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.send_json(code, error_body(message or phrase, type="invalid_request_error"))
        self.log_line()

    def log_message(self, format, *args):  # http.server's own lines: replaced by log_line
        pass

    def log_line(self) -> None:
        ms = (time.monotonic() - self.started) * 1000
        tokens = f"{self.tokens['prompt_tokens']}+{self.tokens['completion_tokens']} tokens " if self.tokens else ""
        note = f" ({self.note})" if self.note else ""
        method, path = getattr(self, "command", None) or "-", getattr(self, "path", None) or "-"
        self.app.log(f"npgpt serve: {self.client_address[0]} {method} {path} {self.status or '-'} {tokens}"
                     f"{ms:.0f} ms{note}")


def job_error(e: NpgptError) -> ApiError:
    """A job that failed while it ran: the server shutting down (503), or what its settings led to (400, e.g. a
    distribution its rules left empty)."""
    if isinstance(e, BusyError):
        return ApiError(503, f"{e}; try again shortly", type="server_busy", code="server_busy")
    return ApiError(400, str(e) or type(e).__name__)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


# ------------------------------------------------------------------------------------------- the command


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_rows: int = 16,
          max_waiting: int = 64, gather: float = GATHER, model_name: str | None = None,
          note: str | None = None) -> None:
    """Serve `model` until SIGINT (Ctrl-C) or SIGTERM, then stop cleanly: no new connections, each request under
    way answered 503 (a stream: an error event ends it), the scheduler closed (see Server.close).
    note: a line to print after the address (which is what a script reads first)."""
    if not is_loopback(host):
        print(f"npgpt serve: warning: --host {host} lets other machines reach this server"
              f"{'' if api_key else ' and, without --api-key, use it'}; --host 127.0.0.1 keeps it local",
              file=sys.stderr)
    server = Server(model, host=host, port=port, api_key=api_key, model_name=model_name, max_rows=max_rows,
                    max_waiting=max_waiting, gather=gather).start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"npgpt serve: {server.model_name} on {server.url} (POST /v1/completions, GET /v1/models, "
              f"GET /health){'; API key required' if api_key else ''}; Ctrl-C stops", file=sys.stderr, flush=True)
        if note:
            print(f"npgpt serve: {note}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    print("npgpt serve: stopped", file=sys.stderr, flush=True)
