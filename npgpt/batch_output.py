"""A batch job's output file (npgpt.batch): results appended whole, in input order, and read back on resume.

Each result line of a file ends with "input_hash", a short hash of the input line it was made from: a rerun
checks the lines already written against the input it is given, so a request changed since (same id, another
prompt) is not left with a stale result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

from .errors import NpgptError

FSYNC_SECONDS = 2.0
HASH_FIELD = "input_hash"


def input_hash(line: bytes) -> str:
    """The first 12 hex digits of the SHA-256 of an input line without its line ending (the last line of a file
    may lack one, and gain it when lines are added after it)."""
    return hashlib.sha256(line.rstrip(b"\r\n")).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ output


class Ordered:
    """Takes results in any order and passes them on in input order, from index `start` on; a result whose
    predecessors are not all in yet waits here. Results before `start` (already written) are dropped."""

    def __init__(self, emit, start: int = 0):
        self.emit, self.next, self.waiting = emit, start, {}

    def put(self, index: int, result: dict) -> None:
        if index >= self.next:
            self.waiting[index] = result
        while self.next in self.waiting:
            self.emit(self.waiting.pop(self.next))
            self.next += 1


class ResultFile:
    """OUT, appended to a whole line at a time: one write() of the line with its newline, fsync'ed every
    FSYNC_SECONDS and at the end. A write that fails is undone (the file is cut back to its last whole line)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise NpgptError(f"cannot write {path}: {e.strerror or e}") from None
        self.size, self.synced = os.fstat(self.fd).st_size, time.monotonic()

    def write(self, result: dict) -> None:
        try:
            data = (json.dumps(result, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (e.g. in an id) is only valid JSON escaped
            data = (json.dumps(result) + "\n").encode("utf-8")
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError as e:
            os.ftruncate(self.fd, self.size)
            raise NpgptError(f"cannot write {self.path}: {e.strerror or e}; free some space and rerun the same "
                             "command to resume") from None
        self.size += len(data)
        if time.monotonic() - self.synced > FSYNC_SECONDS:
            os.fsync(self.fd)
            self.synced = time.monotonic()

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


@dataclasses.dataclass(frozen=True, slots=True)  # one per line of OUT: a rerun holds them all
class Written:
    """A result line already in OUT, as a rerun checks it against its input line."""

    key: str  # what names it (see Request.key): its id, or its line number when it has none
    input_hash: str | None  # None on a line written before npgpt recorded it: then only the key is checked
    failed: bool  # an error result


def written_results(path: str) -> list[Written]:
    """The result lines already in OUT, after cutting off a torn last line (a line without its newline or not
    JSON: the job was killed while writing it). Any other bad line is an error."""
    written, good = [], 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise NpgptError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        while line := f.readline():
            result = _result_line(line)
            if result is None:
                if f.read(1):
                    raise NpgptError(f"{path}: line {len(written) + 1} is not a result of npgpt batch; write the "
                                     "results to a new file")
                break
            key = f"id {json.dumps(result['id'])}" if "id" in result else f"line {result.get('line')}"
            written.append(Written(key, result.get(HASH_FIELD), "error" in result))
            good += len(line)
    if good < os.path.getsize(path):
        os.truncate(path, good)
        print(f"npgpt: {path}: removed a torn last line (the job stopped while writing it)", file=sys.stderr)
    return written


def _result_line(line: bytes) -> dict | None:
    if not line.endswith(b"\n"):
        return None
    try:
        result = json.loads(line)
    except ValueError:
        return None
    return result if isinstance(result, dict) and ("id" in result or "line" in result) else None
