"""A one-line progress bar on stderr, for downloads (bytes) and long jobs (tokens, rows, steps).

    bar = Progress("score", total=512, enabled=wanted(None), unit="tokens", transient=True)
    for ...:
        bar.update(n)        # redrawn at most five times a second
    bar.close()              # transient: the line is erased; else it is drawn a last time and ended

wanted(None) is True when stderr is a terminal; NPGPT_PROGRESS=1 (or 0) forces the bars on (or off).
"""

from __future__ import annotations

import os
import sys
import time

EIGHTHS = " ▏▎▍▌▋▊▉"
WIDTH = 20  # characters of the bar itself


def wanted(setting: bool | None = None, stream=None) -> bool:
    """Whether to draw a bar: `setting` when it is True or False; None: NPGPT_PROGRESS when it is set (1 or 0),
    else whether the stream (stderr) is a terminal."""
    if setting is not None:
        return bool(setting)
    forced = os.environ.get("NPGPT_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """A one-line progress bar on stderr: done / total, rate and time left; nothing when disabled.
    unit None counts bytes (shown in MB); any other unit counts items ("tokens", "rows", "steps")."""

    def __init__(self, label: str, total: int | None, enabled: bool, done: int = 0, stream=None,
                 unit: str | None = None, transient: bool = False):
        self.label, self.total, self.enabled, self.done = label, total, enabled, done
        self.unit, self.transient = unit, transient
        self.stream = stream or sys.stderr
        self.start, self.start_done, self.last = time.monotonic(), done, 0.0
        self.drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self._draw(now)

    def rate(self, now: float | None = None) -> float:
        """Units per second since the start."""
        now = time.monotonic() if now is None else now
        return (self.done - self.start_done) / max(now - self.start, 1e-6)

    def text(self, now: float) -> str:
        rate = self.rate(now)
        if self.unit is None:  # bytes
            scale, unit, digits = 1e6, "MB", ".1f"
        else:
            scale, unit, digits = 1, self.unit, ",.0f"
        done = f"{self.done / scale:8{digits}}"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else 0
            return (f"{self.label}: {_bar(self.done / self.total)} {done} / {self.total / scale:{digits}} {unit}  "
                    f"{rate / scale:6.1f} {unit}/s  {int(left) // 60}:{int(left) % 60:02d} left")
        return f"{self.label}: {done} {unit}  {rate / scale:6.1f} {unit}/s"

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.text(now) + "\x1b[K")  # \x1b[K: erase what a longer line left
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        """Erase the bar (e.g. before printing a line); the next update draws it again at once."""
        if self.enabled and self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn, self.last = False, 0.0

    def close(self) -> None:
        if not self.enabled:
            return
        if self.transient:
            self.clear()
            return
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def _bar(fraction: float) -> str:
    eighths = int(round(max(0.0, min(1.0, fraction)) * WIDTH * 8))
    full, rest = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[rest] if rest else "")).ljust(WIDTH)
