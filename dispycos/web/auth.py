# -*- test-case-name: tests.unit.test_web_auth -*-
"""
Who may use the monitor: L{RequestGuard} says why a request is refused, or
None.

Every request needs the monitor's access token, a random value (or the one
given): as the C{token} query parameter of the address the monitor prints
(the answer then sets the token as an HttpOnly, SameSite=Strict cookie,
C{dispycos_monitor_<port>}), or in that cookie. Requests naming a host that
is neither an IP address, C{localhost}, this machine's name nor an allowed
host are refused (DNS rebinding); requests other than GET and HEAD are
refused when the browser says they come from another site (C{Origin},
C{Referer} or C{Sec-Fetch-Site}).
"""

import hmac
import ipaddress
import secrets
import socket
import urllib.parse

__all__ = ["RequestGuard", "SECURITY_HEADERS", "new_token"]

#: headers every answer carries
SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
    b"content-security-policy": (b"default-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                                 b"form-action 'self'; base-uri 'none'"),
}


def new_token():
    """A random access token (32 characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def this_host_names(host=""):
    """The names a browser may use for this machine besides IP addresses: C{localhost}, its name, C{host}."""
    names = {"localhost"}
    if host:
        names.add(host.lower())
    try:
        names.add(socket.gethostname().lower())
    except OSError:
        pass
    return names


class RequestGuard:
    """
    The token and host checks of the monitor's requests.

    @param token: the access token.
    @param allowed_hosts: host names browsers may use (besides IP addresses
        and C{*.localhost}).
    @param port: a callable giving the port listened on (it names the cookie).
    """

    def __init__(self, token, allowed_hosts, port):
        self.token = token
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self._port = port

    @property
    def cookie_name(self):
        """The cookie that carries the token (one per port: cookies do not tell ports apart)."""
        return "dispycos_monitor_%d" % self._port()

    def host_allowed(self, hostport):
        if hostport.startswith("["):
            host = hostport[1:].partition("]")[0]
        elif hostport.count(":") == 1:
            host = hostport.partition(":")[0]
        else:
            host = hostport
        host = host.lower().rstrip(".")
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        return host in self.allowed_hosts or host.endswith(".localhost")

    def authorized(self, request):
        """
        True when C{request} carries the token: as its C{token} query
        parameter (then it gets the cookie) or in the cookie.
        """
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.uri).query.decode("latin-1"))
        given = (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            request.addCookie(self.cookie_name.encode(), self.token.encode(), path=b"/", httpOnly=True,
                              sameSite="strict", secure=request.isSecure() or None)
            return True
        cookie = request.getCookie(self.cookie_name.encode())
        return bool(cookie) and hmac.compare_digest(cookie, self.token.encode())

    def refuse(self, request):
        """Why C{request} is refused, or None."""
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
        if host and not self.host_allowed(host):
            return "unknown host name %r (give it in allowed_hosts)" % (host,)
        if not self.authorized(request):
            return "missing or wrong access token: open the address the monitor printed (with ?token=...)"
        if request.method in (b"GET", b"HEAD"):
            return None
        fetch_site = (request.getHeader(b"sec-fetch-site") or b"").decode("latin-1").lower()
        if fetch_site in ("cross-site", "same-site"):
            return "cross-site request"
        scheme = "https" if request.isSecure() else "http"
        expected = ("%s://%s" % (scheme, host)).lower()
        origin = request.getHeader(b"origin")
        if origin is not None:
            if origin.decode("latin-1").strip().lower() != expected:
                return "cross-site request (Origin %s)" % (origin.decode("latin-1"),)
            return None
        referer = request.getHeader(b"referer")
        if referer is not None:
            parts = urllib.parse.urlsplit(referer.decode("latin-1").strip())
            if ("%s://%s" % (parts.scheme, parts.netloc)).lower() != expected:
                return "cross-site request (Referer)"
        return None
