"""
The monitor's pages in a real headless Chromium, driven by Playwright's sync
API. The computation and its monitor run in a child process
(tests/httpd_cluster_proc.py): a sync Playwright call would block the
reactor of this process. Two real nodes (127.0.0.1 with 2 servers and
127.0.0.2 with 1) make the node table worth sorting.

Needs /usr/bin/chromium (apt: chromium) and the playwright package (pip);
skipped without them. Screenshots go to test-artifacts/; the README's
docs/cluster.png is written when it is missing or with DISPYCOS_UPDATE_DOCS=1.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

from .conftest import ROOT, NodeProcess, env_for_children

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
README_SHOT = os.path.join(ROOT, "docs", "cluster.png")
WAIT_MS = 20000

if not os.path.exists(CHROMIUM):
    pytest.skip("no %s (apt-get install chromium)" % CHROMIUM, allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)


class ClusterProcess:
    """tests/httpd_cluster_proc.py as a child: its output lines, its stdin commands."""

    def __init__(self, nodes, secret, poll=60, long=3):
        cmd = [sys.executable, os.path.join(ROOT, "tests", "httpd_cluster_proc.py"), "--secret", secret,
               "--poll", str(poll), "--long", str(long)]
        for n in nodes:
            cmd += ["--node", n]
        self.tmp = tempfile.mkdtemp(prefix="dispycos-test-cluster-")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env_for_children(self.tmp), cwd=ROOT, start_new_session=True)
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern, timeout=60, after=0):
        """The first match of C{pattern} in lines C{after}..., waiting at most C{timeout} s."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[after:]:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError("no line matching %r within %s s; output:\n%s"
                                         % (pattern, timeout, "\n".join(self.lines)))
                self.cond.wait(min(left, 0.5))

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def output(self):
        with self.cond:
            return "\n".join(self.lines)

    def with_token(self, path=""):
        """The address of C{path} with the monitor's token (as the address it printed has it)."""
        return self.url + path + ("&" if "?" in path else "?") + "token=" + self.token

    def stop(self):
        try:
            if self.proc.poll() is None:
                try:
                    self.command("quit")
                    self.proc.stdin.close()
                except (BrokenPipeError, ValueError, OSError):
                    pass
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.reader.join(5)
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(node):
    second = NodeProcess(cpus=1, secret=node.secret, host="127.0.0.2", args=("-n", "beta"))
    proc = None
    try:
        proc = ClusterProcess([node.location, second.location], node.secret)
        port = int(proc.wait_line(r"^PORT (\d+)$", timeout=90).group(1))
        started = [m for m in re.findall(r"^STARTED (\S+) (\S+)$", proc.output(), re.M)]
        assert len(started) == 3, proc.output()
        proc.port = port
        # what the monitor printed: its address and its token
        printed = proc.wait_line(r"^dispycos monitor at (http://127\.0\.0\.1:(\d+)/)\?token=([\w-]+)$", timeout=5)
        assert int(printed.group(2)) == port
        proc.url, proc.token = printed.group(1), printed.group(3)
        proc.started = started
        yield proc
    finally:
        if proc is not None:
            proc.stop()
        second.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as p:
        yield p


class Browser:
    """One Chromium (its own fresh profile directory)."""

    def __init__(self, playwright):
        self.profile = tempfile.mkdtemp(prefix="dispycos-chromium-")
        self.context = playwright.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 720}, timeout=60000)
        self.context.set_default_timeout(WAIT_MS)
        self.errors = []

    def page(self, url):
        page = self.context.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.goto(url)
        return page

    def close(self):
        try:
            self.context.close()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser(playwright):
    browsers = []

    def make():
        b = Browser(playwright)
        browsers.append(b)
        return b

    yield make
    for b in browsers:
        b.close()
    for b in browsers:
        assert not b.errors, b.errors  # no JavaScript errors on any page


def screenshot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=True)


def wait_text(page, selector, expected, timeout=WAIT_MS):
    """Wait until the text of C{selector} is C{expected}."""
    page.wait_for_function(
        "([sel, want]) => { const e = document.querySelector(sel); return e && e.textContent.trim() === want; }",
        arg=[selector, str(expected)], timeout=timeout)


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_history(cluster, samples, timeout=30):
    """Wait until /cluster_status holds C{samples} resource samples for every node."""
    deadline = time.monotonic() + timeout
    while True:
        status = fetch_json(cluster.with_token("cluster_status"))
        if status["nodes"] and all(len(n["history"]) >= samples for n in status["nodes"]):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def node_order(page):
    return page.eval_on_selector_all("#nodes tbody tr", "rows => rows.map(r => r.dataset.addr)")


def test_cluster_page_lists_nodes_and_servers(cluster, browser):
    page = browser().page(cluster.with_token())
    page.wait_for_selector('#nodes tr[data-addr="127.0.0.1"]')
    page.wait_for_selector('#nodes tr[data-addr="127.0.0.2"]')
    wait_text(page, '#nodes tr[data-addr="127.0.0.1"] td.servers', "2")
    wait_text(page, '#nodes tr[data-addr="127.0.0.2"] td.servers', "1")
    wait_text(page, '#nodes tr[data-addr="127.0.0.2"] td.name', "beta")
    status = fetch_json(cluster.with_token("cluster_status"))
    wait_text(page, "#tasks-running", status["tasks_running"])
    wait_text(page, "#tasks-submitted", status["tasks_submitted"])
    wait_text(page, "#node-count", "2")
    # resources arrive every pulse; the charts get drawn from their history
    page.wait_for_function("""() => {
        const td = document.querySelector('#nodes tr[data-addr="127.0.0.1"] td.cpu');
        return td && td.textContent.endsWith('%');
    }""")
    page.wait_for_function("""() => {
        const c = document.querySelector('#nodes tr[data-addr="127.0.0.1"] canvas');
        if (!c) return false;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let colored = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2])) colored++;
        return colored > 20;
    }""", timeout=30000)
    assert page.locator("#live").text_content() == "live"
    # for a telling picture: two tasks done, and some seconds of resource history
    mark = len(cluster.lines)
    cluster.command("short 1 warm-a")
    cluster.command("short 1 warm-b")
    for label in ("warm-a", "warm-b"):
        cluster.wait_line(r"^FINISHED \S+ ok %s done$" % label, timeout=30, after=mark)
    wait_text(page, "#tasks-done", status["tasks_done"] + 2)
    wait_history(cluster, 8)
    page.wait_for_timeout(1500)
    screenshot(page, "cluster.png")
    # the README's picture: written when missing, or when asked (DISPYCOS_UPDATE_DOCS=1)
    page.set_viewport_size({"width": 1200, "height": 410})
    page.screenshot(path=os.path.join(ARTIFACTS, "readme-cluster.png"))
    if not os.path.exists(README_SHOT) or os.environ.get("DISPYCOS_UPDATE_DOCS") == "1":
        os.makedirs(os.path.dirname(README_SHOT), exist_ok=True)
        shutil.copyfile(os.path.join(ARTIFACTS, "readme-cluster.png"), README_SHOT)

    # the Node page: the node's details and its servers, linked to their pages
    page.click('#nodes tr[data-addr="127.0.0.1"] td.addr a')
    page.wait_for_selector("#servers tbody tr")
    wait_text(page, "#d-addr", "127.0.0.1")
    wait_text(page, "#d-running", fetch_json(cluster.with_token("node_info?host=127.0.0.1"))["tasks_running"])
    assert page.locator("#servers tbody tr").count() == 2
    locations = page.eval_on_selector_all("#servers tbody tr", "rows => rows.map(r => r.dataset.location)")
    assert all(loc.startswith("127.0.0.1:") for loc in locations)
    screenshot(page, "node.png")
    page.click('#servers tbody tr[data-location="%s"] td.location a' % locations[0])
    page.wait_for_url(re.compile(r"server\.html\?location="))
    wait_text(page, "#d-location", locations[0])


def test_sorting_by_columns_other_than_address(cluster, browser):
    page = browser().page(cluster.with_token("cluster.html"))
    page.wait_for_selector('#nodes tr[data-addr="127.0.0.2"]')
    wait_text(page, '#nodes tr[data-addr="127.0.0.1"] td.servers', "2")
    assert node_order(page) == ["127.0.0.1", "127.0.0.2"]  # by address at first
    page.click('#nodes th[data-key="servers"]')  # most servers first
    assert node_order(page) == ["127.0.0.1", "127.0.0.2"]
    assert page.get_attribute('#nodes th[data-key="servers"]', "aria-sort") == "descending"
    page.click('#nodes th[data-key="servers"]')
    assert node_order(page) == ["127.0.0.2", "127.0.0.1"]
    assert page.get_attribute('#nodes th[data-key="servers"]', "aria-sort") == "ascending"
    page.click('#nodes th[data-key="name"]')  # "beta" < the other node's host name
    names = page.eval_on_selector_all("#nodes tbody td.name", "tds => tds.map(t => t.textContent)")
    assert names == sorted(names) and names[0] == "beta"
    page.click('#nodes th[data-key="addr"]')
    assert node_order(page) == ["127.0.0.1", "127.0.0.2"]
    # the order holds across refreshes
    page.click('#nodes th[data-key="servers"]')
    page.click('#nodes th[data-key="servers"]')
    page.wait_for_timeout(1500)
    assert node_order(page) == ["127.0.0.2", "127.0.0.1"]


def test_server_page_shows_arguments_and_terminates_a_task(cluster, browser):
    tid, label = cluster.started[0]
    location = tid.rpartition("@")[2]
    page = browser().page(cluster.with_token("server.html?location=" + location))
    row = '#tasks tr[data-task="%s"]' % tid
    page.wait_for_selector(row)
    args = page.locator(row + " td.args").text_content()
    assert "'%s'" % label in args and "seconds=600" in args, args
    assert page.locator(row + " td.name").text_content() == "long_task"
    screenshot(page, "server.png")

    # declining the confirmation terminates nothing
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.check(row + " input[type=checkbox]")
    page.click("#terminate-tasks")
    page.wait_for_selector("#messages li:has-text('Not terminated')")
    assert dialogs and tid in dialogs[0]
    mark = len(cluster.lines)

    page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.click("#terminate-tasks")
    assert len(dialogs) == 2
    cluster.wait_line(r"^TERMINATED %s$" % re.escape(tid), timeout=30, after=mark)
    page.wait_for_selector(row, state="detached")
    page.wait_for_selector('#finished tr[data-task="%s"] td.outcome:has-text("TaskTerminated")' % tid)
    assert "TERMINATED %s" % tid not in cluster.output().split("\n")[:mark]
    screenshot(page, "server-terminated.png")


def test_two_browsers_see_everything_and_a_task_finish(cluster, browser):
    first, second = browser(), browser()
    pages = [first.page(cluster.with_token()), second.page(cluster.with_token())]
    for page in pages:
        page.wait_for_selector('#nodes tr[data-addr="127.0.0.1"]')
        page.wait_for_selector('#nodes tr[data-addr="127.0.0.2"]')
        page.wait_for_function("() => document.querySelector('#live').textContent === 'live'")
    done = int(pages[0].locator("#tasks-done").text_content())
    running = int(pages[0].locator("#tasks-running").text_content())
    for page in pages:
        wait_text(page, "#tasks-done", done)
        wait_text(page, "#node-count", "2")
    mark = len(cluster.lines)
    cluster.command("short 2 quick")
    started = cluster.wait_line(r"^STARTED (\S+) 2$", timeout=30, after=mark).group(1)
    # the poll interval is 60 s: these updates come by server-sent events
    for page in pages:
        wait_text(page, "#tasks-running", running + 1)
    cluster.wait_line(r"^FINISHED %s ok quick done$" % re.escape(started), timeout=30, after=mark)
    for page in pages:
        wait_text(page, "#tasks-done", done + 1)
        wait_text(page, "#tasks-running", running)
    screenshot(pages[1], "cluster-second-browser.png")


def test_settings_from_the_page_reach_every_browser(cluster, browser):
    first, second = browser(), browser()
    tid, label = cluster.started[1]
    location = tid.rpartition("@")[2]
    cluster_page = first.page(cluster.with_token())
    server_page = second.page(cluster.with_token("server.html?location=" + location))
    row = '#tasks tr[data-task="%s"] td.args' % tid
    server_page.wait_for_selector(row)
    cluster_page.wait_for_function("() => document.querySelector('#live').textContent === 'live'")
    assert cluster_page.locator("#poll-sec").input_value() == "60"
    try:
        cluster_page.uncheck("#show-args")
        cluster_page.fill("#poll-sec", "30")
        cluster_page.click("#apply-settings")
        wait_text(server_page, row, "(hidden)")
        server_page.wait_for_function("() => document.querySelector('#poll-sec').value === '30'")
    finally:
        cluster_page.check("#show-args")
        cluster_page.fill("#poll-sec", "60")
        cluster_page.click("#apply-settings")
    server_page.wait_for_function("([sel, want]) => document.querySelector(sel).textContent.includes(want)",
                                  arg=[row, "'%s'" % label])


def test_an_unapplied_setting_survives_updates_from_another_browser(cluster, browser):
    # The settings event another browser's change sends must not undo what this page's user
    # changed and has not applied yet (it did, when an event came between a click and Apply).
    first, second = browser(), browser()
    mine = first.page(cluster.with_token())
    theirs = second.page(cluster.with_token())
    for page in (mine, theirs):
        page.wait_for_function("() => document.querySelector('#live').textContent === 'live'")
    try:
        mine.uncheck("#show-args")  # not applied
        theirs.fill("#poll-sec", "45")
        theirs.click("#apply-settings")
        mine.wait_for_function("() => document.querySelector('#poll-sec').value === '45'")  # the event came
        assert not mine.is_checked("#show-args")
        mine.click("#apply-settings")
        theirs.wait_for_function("() => !document.querySelector('#show-args').checked")
        # Applied: updates reach this page's fields again.
        theirs.check("#show-args")
        theirs.fill("#poll-sec", "60")
        theirs.click("#apply-settings")
        mine.wait_for_function("() => document.querySelector('#show-args').checked"
                               " && document.querySelector('#poll-sec').value === '60'")
    finally:
        theirs.check("#show-args")
        theirs.fill("#poll-sec", "60")
        theirs.click("#apply-settings")
        mine.wait_for_function("() => document.querySelector('#poll-sec').value === '60'")


def test_only_the_token_lets_a_browser_in_and_its_cookie_keeps_it_in(cluster, browser):
    first = browser()
    page = first.page(cluster.url)  # the address without the token: what anyone else can guess
    assert page.goto(cluster.url).status == 403 and "token" in page.content()
    assert page.goto(cluster.url + "?token=not-the-token").status == 403
    assert page.goto(cluster.with_token()).status == 200
    page.wait_for_selector('#nodes tr[data-addr="127.0.0.1"]')
    page.wait_for_function("() => document.querySelector('#live').textContent === 'live'")  # /events: the cookie
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
    [cookie] = [c for c in first.context.cookies() if c["name"] == "dispycos_monitor_%d" % cluster.port]
    assert cookie["value"] == cluster.token and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # the token is not needed in the address any more: the cookie serves
    assert page.goto(cluster.url + "node.html?host=127.0.0.1").status == 200
    wait_text(page, "#d-addr", "127.0.0.1")
    # another browser, without the token, still gets nothing, not even the events
    other = browser().page(cluster.url + "cluster_status")
    assert other.goto(cluster.url + "events").status == 403
