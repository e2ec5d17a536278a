# -*- test-case-name: tests.unit.test_service_window -*-
"""
Daily service windows of a node (C{--service_start}, C{--service_stop},
C{--service_end}).

A window repeats every day. From the start time the node is I{in service}
(it accepts computations); from the stop time it is I{stopped} (no new
computations; a running one goes on); from the end time it has I{ended}
(a running computation is terminated) until the next start. Each time is
taken as the first such time of day after the previous one, so windows that
wrap past midnight work: start 17:00, stop 07:00, end 08:00 serves from 5 PM
to 7 AM the next morning, lets running computations go on until 8 AM, and
then serves nobody until 5 PM.

Without a start time, the window starts at the time of day it is created
(the manual's "current time"). At least one of stop and end must be given;
with only an end, the node stops accepting and terminates at that time; with
only a stop, running computations are never terminated by the window.

Nothing here touches a reactor: the time comes from an injected clock, a
function returning a (local, naive) C{datetime}, or anything with a
C{seconds()} method (a reactor, or L{twisted.internet.task.Clock}) read as a
POSIX timestamp in local time. Daylight-saving shifts are not corrected for:
callers should re-evaluate L{ServiceWindow.phase} when a timer fires (the node
does).
"""

from datetime import datetime

IN_SERVICE = "in service"
STOPPED = "stopped"
ENDED = "ended"

DAY = 24 * 3600


class ServiceWindowError(ValueError):
    """A service time is malformed, or the times contradict each other."""


def parse_hhmm(text, what="time"):
    """
    Minutes after midnight of C{"HH:MM"} (24-hour clock).

    @raise ServiceWindowError: for anything else.
    """
    if isinstance(text, str):
        parts = text.strip().split(":")
        if len(parts) == 2 and all(p.isdigit() and 1 <= len(p) <= 2 for p in parts):
            hours, minutes = int(parts[0]), int(parts[1])
            if hours < 24 and minutes < 60:
                return hours * 60 + minutes
    raise ServiceWindowError("%s %r is not a time of day HH:MM (00:00 to 23:59)" % (what, text))


def format_minutes(minutes):
    return "%02d:%02d" % divmod(int(minutes) % (24 * 60), 60)


def clock_function(clock):
    """
    A function returning the current local C{datetime}, from C{clock}: None
    (the system clock), a function returning a C{datetime}, or an object with
    C{seconds()} (a reactor or a L{twisted.internet.task.Clock}).
    """
    if clock is None:
        return datetime.now
    seconds = getattr(clock, "seconds", None)
    if seconds is not None:
        return lambda: datetime.fromtimestamp(seconds())
    if callable(clock):
        return clock
    raise TypeError("not a clock: %r" % (clock,))


def _seconds_of_day(when):
    return when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6


class ServiceWindow:
    """
    A daily service window.

    @param start: C{"HH:MM"} or None (the time of day now, by C{clock}).
    @param stop: C{"HH:MM"} or None: no new computations from then on.
    @param end: C{"HH:MM"} or None: running computations terminated.
    @param clock: see L{clock_function}; used where a method is given no time.

    @raise ServiceWindowError: bad times, neither stop nor end, stop or end
        equal to start, or end coming before stop.
    """

    def __init__(self, start=None, stop=None, end=None, clock=None):
        self.now = clock_function(clock)
        if stop is None and end is None:
            raise ServiceWindowError("a service window needs a stop time or an end time (--service_stop/--service_end)")
        self.start_given = start
        if start is None:
            now = self.now()
            self.start = now.hour * 60 + now.minute
        else:
            self.start = parse_hhmm(start, "service start time")
        stop_min = None if stop is None else parse_hhmm(stop, "service stop time")
        end_min = None if end is None else parse_hhmm(end, "service end time")
        if stop_min is None:
            stop_min = end_min
        self.stop = stop_min
        self.end = end_min
        # Offsets (seconds) from the start of each daily window.
        self.stop_offset = ((stop_min - self.start) % (24 * 60)) * 60
        self.end_offset = None if end_min is None else ((end_min - self.start) % (24 * 60)) * 60
        if self.stop_offset == 0:
            raise ServiceWindowError("service stop/end time %s equals the start time" % format_minutes(stop_min))
        if self.end_offset is not None:
            if self.end_offset == 0:
                raise ServiceWindowError("service end time %s equals the start time" % format_minutes(end_min))
            if self.end_offset < self.stop_offset:
                raise ServiceWindowError(
                    "service end time %s comes before the stop time %s (counting from the start time %s)"
                    % (format_minutes(end_min), format_minutes(stop_min), format_minutes(self.start))
                )

    def __repr__(self):
        return "<ServiceWindow %s>" % (self,)

    def __str__(self):
        text = "start %s, stop %s" % (format_minutes(self.start), format_minutes(self.stop))
        if self.end is not None:
            text += ", end %s" % format_minutes(self.end)
        return text

    def _offset(self, when):
        if when is None:
            when = self.now()
        return (_seconds_of_day(when) - self.start * 60) % DAY

    def _phase_at(self, offset):
        if offset < self.stop_offset:
            return IN_SERVICE
        if self.end_offset is not None and offset >= self.end_offset:
            return ENDED
        return STOPPED

    def phase(self, when=None):
        """L{IN_SERVICE}, L{STOPPED} or L{ENDED} at C{when} (default: now)."""
        return self._phase_at(self._offset(when))

    def in_service(self, when=None):
        """Whether new computations are accepted at C{when}."""
        return self.phase(when) == IN_SERVICE

    def past_stop(self, when=None):
        """Whether C{when} is after the stop time (including after the end time)."""
        return self.phase(when) != IN_SERVICE

    def past_end(self, when=None):
        """Whether running computations must be terminated at C{when}."""
        return self.phase(when) == ENDED

    def next_transition(self, when=None):
        """
        C{(seconds, phase)}: how long after C{when} (default: now) the phase
        next changes, and the phase it changes to.
        """
        offset = self._offset(when)
        current = self._phase_at(offset)
        bounds = sorted({self.stop_offset, DAY} | ({self.end_offset} if self.end_offset is not None else set()))
        for bound in bounds:
            if bound > offset:
                phase = self._phase_at(bound % DAY)
                if phase != current:
                    return bound - offset, phase
        # Only reachable when every boundary keeps the phase (not possible
        # with a valid window); answer "a day from now" rather than loop.
        return DAY - offset, self._phase_at(0)
