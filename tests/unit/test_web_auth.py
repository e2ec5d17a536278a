"""
The monitor's access token and request checks (dispycos.web.auth) on fake
requests: the token in the query gives an HttpOnly SameSite=Strict cookie,
the cookie serves from then on, anything else is refused; unknown host
names and cross-site POSTs are refused.
"""

import pytest

from dispycos.web.auth import RequestGuard, new_token, this_host_names

from .webfakes import FakeRequest

TOKEN = "the-token-of-this-monitor"
COOKIE = b"dispycos_monitor_8181"


@pytest.fixture
def guard():
    return RequestGuard(TOKEN, this_host_names("monitor.example") | {"allowed.example"}, lambda: 8181)


def request(path=b"/cluster_status", method=b"GET", host=b"127.0.0.1:8181", cookie=None, secure=False, **headers):
    hdrs = {b"host": host} if host is not None else {}
    hdrs.update({k.replace("_", "-").encode(): v for k, v in headers.items()})
    return FakeRequest(path, method=method, headers=hdrs, cookies={COOKIE: cookie} if cookie else None, secure=secure)


def test_tokens_are_random_and_long():
    tokens = {new_token() for _ in range(20)}
    assert len(tokens) == 20 and all(len(t) >= 32 for t in tokens)


def test_the_token_in_the_query_gives_the_cookie(guard):
    r = request(b"/?token=" + TOKEN.encode())
    assert guard.refuse(r) is None
    [(name, value, attrs)] = r.cookies
    assert guard.cookie_name == COOKIE.decode() and (name, value) == (COOKIE, TOKEN.encode())
    assert attrs == {"path": b"/", "httpOnly": True, "sameSite": "strict", "secure": None}
    secure = request(b"/?token=" + TOKEN.encode(), secure=True)
    assert guard.refuse(secure) is None and secure.cookies[0][2]["secure"] is True  # the cookie stays on https


def test_the_cookie_serves_then(guard):
    r = request(cookie=TOKEN.encode())
    assert guard.refuse(r) is None and r.cookies == []


@pytest.mark.parametrize("path,cookie", [(b"/cluster_status", None), (b"/?token=wrong", None),
                                         (b"/?token=" + TOKEN.encode()[:-1], None), (b"/?token=%E2%82%AC%ff", None),
                                         (b"/?token=", None), (b"/events", b"wrong"), (b"/events", b"")])
def test_without_the_token_refused(guard, path, cookie):
    for method in (b"GET", b"HEAD", b"POST"):
        r = request(path, method=method, cookie=cookie)
        assert "access token" in guard.refuse(r) and r.cookies == []


def test_host_names(guard):
    for host in (b"127.0.0.1:8181", b"[::1]:8181", b"10.1.2.3", b"localhost:8181", b"LOCALHOST.:1",
                 b"app.localhost:8181", b"monitor.example:8181", b"allowed.example", None):
        assert guard.refuse(request(host=host, cookie=TOKEN.encode())) is None, host
    for host in (b"evil.example:8181", b"127.0.0.1.evil.example", b"localhost.evil.example:8181"):
        assert "unknown host name" in guard.refuse(request(host=host, cookie=TOKEN.encode())), host
    # refused before the token is even looked at: no cookie for a rebinding name
    r = request(b"/?token=" + TOKEN.encode(), host=b"evil.example")
    assert "unknown host name" in guard.refuse(r) and r.cookies == []


def test_cross_site_posts_refused(guard):
    def post(**headers):
        return guard.refuse(request(method=b"POST", cookie=TOKEN.encode(), **headers))

    assert post() is None  # not a browser (no Origin, no Referer): allowed
    assert post(origin=b"http://127.0.0.1:8181") is None
    assert post(origin=b"http://127.0.0.1:8181", sec_fetch_site=b"same-origin") is None
    assert post(referer=b"http://127.0.0.1:8181/cluster.html") is None
    for headers in ({"origin": b"http://evil.example"}, {"origin": b"null"}, {"origin": b"http://127.0.0.1:8182"},
                    {"origin": b"https://127.0.0.1:8181"}, {"referer": b"http://evil.example/page.html"},
                    {"sec_fetch_site": b"cross-site"}, {"sec_fetch_site": b"same-site"}):
        assert "cross-site" in post(**headers), headers
    # reading is not a cross-site matter (the token guards it)
    assert guard.refuse(request(cookie=TOKEN.encode(), origin=b"http://evil.example")) is None
    # on https, the http:// origin is another site
    assert "cross-site" in guard.refuse(request(method=b"POST", cookie=TOKEN.encode(), secure=True,
                                                origin=b"http://127.0.0.1:8181"))
    assert guard.refuse(request(method=b"POST", cookie=TOKEN.encode(), secure=True,
                                origin=b"https://127.0.0.1:8181")) is None
