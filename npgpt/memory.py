"""Size checks before large allocations: a request that cannot fit in this machine's memory is refused at once,
with what it needs and what to lower, instead of allocating for a minute and ending in a MemoryError."""

from __future__ import annotations

import os

from .errors import SettingsError


def physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, advice: str, error=SettingsError) -> None:
    """Raise `error` when `what` needs more bytes than the machine's RAM."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise error(f"{what} needs {human(nbytes)} of memory; this machine has {human(total)}; {advice}")


def human(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} PB"
