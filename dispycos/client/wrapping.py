"""
The machinery of the blocking API (L{dispycos.client.blocking}): blocking
objects around Deferred-API ones (L{_Wrapper}), and the blocking form of a
Deferred method (L{_blocking}): it runs in the reactor's thread, and its
value comes back, within a timeout.
"""

import functools
import inspect

from twisted.internet import defer

from dispycos.client.background import wait

#: Seconds beyond a call's own C{timeout} (the Deferred API's, which then
#: fails the call with a better message) that its wait may take.
GRACE = 10


# -- wrapping values ----------------------------------------------------------------


def _unwrap(value):
    """The Deferred-API object behind a blocking one (others as they are)."""
    return value.wrapped if isinstance(value, _Wrapper) else value


#: (Deferred-API class, blocking class) pairs, most specific first: what
#: L{_wrap} turns into which handle (L{dispycos.client.blocking} fills it in).
handles = []


def _wrap(value, call_timeout):
    """Task references (alone or in a list) as blocking handles; other values as they are."""
    for deferred_cls, blocking_cls in handles:
        if isinstance(value, deferred_cls):
            return blocking_cls._around(value, call_timeout)
    if isinstance(value, list):
        return [_wrap(v, call_timeout) for v in value]
    return value


def _cancel(returned):
    """Abandoning a wait: cancel the Deferred that was waited for."""
    if isinstance(returned, defer.Deferred) and not returned.called:
        returned.cancel()


class _Wrapper:
    """A blocking object around a Deferred-API one (C{wrapped}); reads other attributes through."""

    wrapped = None
    call_timeout = None

    def __getattr__(self, name):
        if name.startswith("__") or self.wrapped is None:
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __repr__(self):
        return "<blocking %r>" % (self.wrapped,)


def _blocking(cls, name, abandon=None):
    """
    The blocking form of the Deferred method C{cls.name}: it runs in the
    reactor's thread and its result comes back as a value. Where the method
    has a C{timeout} parameter, that bounds the wait (default: the object's
    C{call_timeout}); else a keyword-only C{timeout=} does.
    """
    function = getattr(cls, name)
    signature = inspect.signature(function)
    what = "%s.%s" % (cls.__name__, name)

    if "timeout" in signature.parameters:

        def method(self, *args, **kwargs):
            bound = signature.bind(None, *map(_unwrap, args), **kwargs)
            timeout = bound.arguments.get("timeout")
            if timeout is None and self.call_timeout is not None:
                bound.arguments["timeout"] = timeout = self.call_timeout
            target = getattr(self.wrapped, name)
            thunk = functools.partial(target, *bound.args[1:], **bound.kwargs)
            limit = None if timeout is None else timeout + GRACE
            return _wrap(wait(thunk, limit, abandon, what), self.call_timeout)
    else:

        def method(self, *args, timeout=None, **kwargs):
            target = getattr(self.wrapped, name)
            thunk = functools.partial(target, *map(_unwrap, args), **kwargs)
            limit = self.call_timeout if timeout is None else timeout
            return _wrap(wait(thunk, limit, abandon, what), self.call_timeout)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = "Blocking %s (see the Deferred API): its value, not a Deferred.\n\n%s" % (
        what, inspect.getdoc(function) or "")
    return method


def _generate(namespace, cls, names, abandon=None):
    """Put the blocking form of each method C{names} of C{cls} in C{namespace} (a class body's)."""
    for name in names:
        namespace[name] = _blocking(cls, name, (abandon or {}).get(name))
