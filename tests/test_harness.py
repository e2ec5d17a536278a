"""The test harness itself: a test that waits forever fails in bounded time, and its cleanup runs."""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

HUNG = '''
import pytest_twisted
from twisted.internet import defer, reactor, task

cleaned = []


@pytest_twisted.ensureDeferred
async def test_awaits_forever():
    try:
        await defer.Deferred()
    finally:
        cleaned.append("coroutine")


@pytest_twisted.inlineCallbacks
def test_yields_forever():
    yield defer.Deferred()


def test_the_hung_tests_cleanup_ran():
    assert cleaned == ["coroutine"]


@pytest_twisted.ensureDeferred
async def test_a_quick_one_passes():
    await task.deferLater(reactor, 0.01, lambda: None)
'''


def test_a_test_that_waits_forever_fails_with_a_timeout_and_the_run_goes_on(tmp_path):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = dict(os.environ, DISPYCOS_TEST_TIMEOUT="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(HERE), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "2 failed, 2 passed" in out.stdout, out.stdout + out.stderr
    assert out.stdout.count("TimeoutError") >= 2
