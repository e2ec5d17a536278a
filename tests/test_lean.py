"""
Lean processes (dispycos._lean): node and servers import Twisted without
pyOpenSSL unless the node runs with --twisted_tls; tasks can still import
pyOpenSSL, and TLS links keep working (tests/test_tls.py).
"""

import pytest_twisted

from .conftest import NodeProcess, Session, run_python


def twisted_tls_state():
    import sys

    from twisted.internet import posixbase

    loaded_at_start = "OpenSSL" in sys.modules
    import OpenSSL  # a task may still import it

    return {"at_start": loaded_at_start, "reactor_tls": posixbase.tls is not None, "pyopenssl": OpenSSL.__name__}


@pytest_twisted.ensureDeferred
async def test_servers_start_without_pyopenssl(node):
    async with Session(node, [twisted_tls_state]) as comp:
        state = await comp.run_result(twisted_tls_state)
    assert state == {"at_start": False, "reactor_tls": False, "pyopenssl": "OpenSSL"}


def listen_ssl():
    from twisted.internet import reactor, protocol

    try:
        reactor.listenSSL(0, protocol.Factory(), None, interface="127.0.0.1")
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)
    return "listened"


@pytest_twisted.ensureDeferred
async def test_a_task_needing_twisted_tls_is_told_how_to_get_it(node):
    async with Session(node, [listen_ssl]) as comp:
        answer = await comp.run_result(listen_ssl)
    assert answer.startswith("RuntimeError: ") and "--twisted_tls" in answer, answer


@pytest_twisted.ensureDeferred
async def test_twisted_tls_option_loads_it():
    node = NodeProcess(cpus=1, args=["--twisted_tls"])
    try:
        async with Session(node, [twisted_tls_state]) as comp:
            state = await comp.run_result(twisted_tls_state)
    finally:
        node.stop()
    assert state == {"at_start": True, "reactor_tls": True, "pyopenssl": "OpenSSL"}


def test_lean_import_in_a_fresh_interpreter():
    code = (
        "import sys\n"
        "from dispycos import _lean\n"
        "_lean.import_twisted()\n"
        "from twisted.protocols import amp\n"
        "assert 'OpenSSL' not in sys.modules and 'urllib.request' not in sys.modules\n"
        "import http.cookiejar\n"
        "assert http.cookiejar.CookieJar().__class__.__name__ == 'CookieJar'\n"
        "import OpenSSL.SSL\n"
        "print('ok')\n"
    )
    out = run_python(code)
    assert out.stdout.strip() == "ok", out.stderr


def cookie_modules():
    import sys

    loaded_at_start = "urllib.request" in sys.modules
    import http.cookiejar  # a task may still use it

    return {"at_start": loaded_at_start, "works": type(http.cookiejar.CookieJar()).__name__}


@pytest_twisted.ensureDeferred
async def test_servers_start_without_what_twisted_imports_for_cookies(node):
    # Twisted's compatibility module imports http.cookiejar (urllib.request, http.client, email):
    # ~3 MiB in every node and server process, unless loaded lazily before the node's first
    # import of Twisted (dispycos.scripts does it at the top).
    async with Session(node, [cookie_modules]) as comp:
        state = await comp.run_result(cookie_modules)
    assert state == {"at_start": False, "works": "CookieJar"}


def test_the_console_scripts_module_imports_twisted_without_cookies():
    code = ("import sys, dispycos.scripts\n"
            "print('twisted.internet.defer' in sys.modules, 'urllib.request' in sys.modules)\n")
    out = run_python(code)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_import_dispycos_is_light():
    code = "import sys, dispycos; print('twisted.internet.reactor' in sys.modules, 'dispycos.client.computation' in sys.modules)"
    out = run_python(code)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_zygote_preload_installs_no_reactor_and_stays_lean():
    # What dispycosnode imports before it forks its zygote (dispycos.node.zygote.preload): the
    # server's modules and the reactor's module, but no reactor installed (each forked server
    # installs its own), and Twisted's import-time TLS probe found no pyOpenSSL. A Twisted
    # release that probes elsewhere or installs a reactor on import fails here.
    code = (
        "import sys\n"
        "from dispycos.node import zygote\n"
        "zygote.preload()\n"
        "from twisted.internet import posixbase\n"
        "print('twisted.internet.reactor' in sys.modules, 'dispycos.server' in sys.modules,"
        " posixbase.tls is None, 'OpenSSL' in sys.modules)\n"
    )
    out = run_python(code)
    assert out.stdout.split() == ["False", "True", "True", "False"], out.stderr


def asyncio_state():
    import sys

    loaded_at_start = "asyncio" in sys.modules
    import asyncio  # a task may still use it: the real module

    from twisted.internet import defer

    async def three():
        await asyncio.sleep(0)
        return 3

    loop = asyncio.new_event_loop()
    try:
        ran = loop.run_until_complete(three())
        future = loop.create_future()
        converted = []
        defer.Deferred.fromFuture(future).addCallback(converted.append)
        future.set_result(4)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return {"at_start": loaded_at_start, "ran": ran, "converted": converted, "is_future": isinstance(future, defer.Future)}


@pytest_twisted.ensureDeferred
async def test_servers_start_without_asyncio_and_tasks_can_use_it(node):
    # Twisted's defer imports asyncio for three names (dispycos._lean gives it a stand-in):
    # ~2.7 MiB and 30-50 ms a process that node and servers do without.
    async with Session(node, [asyncio_state]) as comp:
        state = await comp.run_result(asyncio_state)
    assert state == {"at_start": False, "ran": 3, "converted": [4], "is_future": True}
