"""A one-line progress bar on stderr, for downloads and long jobs."""

from __future__ import annotations

import sys
import time


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
