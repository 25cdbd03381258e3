"""Progress on stderr for the CLI's long commands (sweep, trace). Used only by cli.py, the one place that prints.

On a terminal the line is redrawn in place; elsewhere (logs, CI) a line is written at most every few seconds,
so a redirected stderr is not flooded.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

_LOG_INTERVAL_S = 5.0


class Counter:
    """`modelmem: sweep 3/12` — call with (done, total) after each unit of work."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = time.monotonic()
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        text = f"modelmem: {self.label} {done}/{total}"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == total else ""))
            self.stream.flush()
        elif now - self._last >= _LOG_INTERVAL_S or (done == total and self._drawn):
            self.stream.write(text + "\n")
            self._drawn = True
            self._last = now


class Ticker:
    """`modelmem: tracing … 12 s` while a single long call runs (a context manager with a daemon thread)."""

    def __init__(self, stream: TextIO, label: str, interval_s: float | None = None) -> None:
        self.stream, self.label = stream, label
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = interval_s if interval_s is not None else (1.0 if self.tty else _LOG_INTERVAL_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = 0.0
        self._wrote = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            elapsed = time.monotonic() - self._start
            text = f"modelmem: {self.label} … {elapsed:.0f} s"
            self.stream.write(("\r" + text) if self.tty else text + "\n")
            self.stream.flush()
            self._wrote = True

    def stage(self, name: str) -> None:
        """A new stage of the call begins (`trace`: building, warm step, traced step, replay…): the label becomes
        `base: name`, written at once when the call has already run a second, so stages of long calls all show."""
        base = self.label.split(": ", 1)[0]
        self.label = f"{base}: {name}" if name else base
        elapsed = time.monotonic() - self._start
        if name and elapsed >= 1.0:
            text = f"modelmem: {self.label} … {elapsed:.0f} s"
            self.stream.write(("\r" + text) if self.tty else text + "\n")
            self.stream.flush()
            self._wrote = True

    def __enter__(self) -> "Ticker":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._wrote:
            elapsed = time.monotonic() - self._start
            self.stream.write(("\r" if self.tty else "") + f"modelmem: {self.label} done in {elapsed:.1f} s\n")
            self.stream.flush()
