# -*- test-case-name: tests.test_retries -*-
"""
Progress of a map (C{progress=True}): a bar with the count, the rate and the
time left on a terminal, and nothing at all when the stream is not one (a
pipe, a file, a notebook's captured stderr).

The bar is tqdm's (C{pip install dispycos[progress]}); without tqdm, a
one-line counter with the same figures. Both are fed on the reactor, once
per batch of outcomes (never per task), and redraw at most every
L{MIN_INTERVAL} seconds.
"""

import os
import sys
import time

#: Seconds between two redraws at most.
MIN_INTERVAL = 0.1


def is_terminal(stream):
    """Whether C{stream} is a terminal (False for anything that cannot say)."""
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def progress_bar(total, stream=None, desc=None):
    """
    A progress display of C{total} tasks (None: unknown) on C{stream}
    (default: stderr) with C{update(n)} and C{close()}, or None when the
    stream is not a terminal.
    """
    stream = sys.stderr if stream is None else stream
    if not is_terminal(stream):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return CounterLine(total, stream, desc)
    # A terminal that reports no size (a bare pseudo-terminal) would get no
    # bar at all from tqdm: it gets one of the usual width.
    sized = _columns(stream) > 0
    size = {} if sized else {"ncols": DEFAULT_COLUMNS, "nrows": DEFAULT_ROWS}
    return tqdm(total=total, file=stream, desc=desc, unit="task", dynamic_ncols=sized, mininterval=MIN_INTERVAL,
                smoothing=0.1, **size)


#: Size of a terminal that does not report its size.
DEFAULT_COLUMNS, DEFAULT_ROWS = 80, 24


def _columns(stream):
    """The width of terminal C{stream}, 0 when it does not say."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except Exception:
        return 0


def _duration(seconds):
    """C{seconds} as C{[h:]mm:ss}."""
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%02d:%02d" % (m, s)


class CounterLine:
    """The display without tqdm: one line, rewritten in place (count, rate, ETA)."""

    def __init__(self, total, stream, desc=None, clock=time.monotonic):
        self.total = total
        self.stream = stream
        self.desc = desc
        self.clock = clock
        self.n = 0
        self.started = clock()
        self.shown = None
        self.closed = False

    def update(self, n=1):
        """C{n} more tasks are done."""
        self.n += n
        now = self.clock()
        if self.shown is None or now - self.shown >= MIN_INTERVAL or (self.total and self.n >= self.total):
            self._show(now)

    def line(self, now):
        """What the display says at time C{now}."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        head = "%s: " % self.desc if self.desc else ""
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else None
            eta = _duration(left) if left is not None else "?"
            return "%s%d/%d tasks (%d%%), %.1f tasks/s, ETA %s" % (
                head, self.n, self.total, 100 * self.n // self.total, rate, eta)
        return "%s%d tasks, %.1f tasks/s, %s" % (head, self.n, rate, _duration(elapsed))

    def _show(self, now):
        self.shown = now
        try:
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
        except Exception:
            pass

    def close(self):
        """The end: the last figures, and a new line."""
        if self.closed:
            return
        self.closed = True
        self._show(self.clock())
        try:
            self.stream.write("\n")
            self.stream.flush()
        except Exception:
            pass
