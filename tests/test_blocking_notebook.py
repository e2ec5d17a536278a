"""
The blocking API in a real Jupyter kernel (ipykernel, which runs an asyncio
loop of its own): examples/notebook.ipynb executed by nbclient, its cells
re-executed in the same kernel, a clean kernel shutdown; and Jupyter's
interrupt (SIGINT to the kernel's process group) during a blocking call.
"""

import os
import time

import pytest

from .blocking_helpers import ROOT, Workdir
from .test_blocking import assert_clean

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")

NOTEBOOK = os.path.join(ROOT, "examples", "notebook.ipynb")
#: Cells of the notebook run three times in a row, and what each run prints.
RERUN = {
    "print(comp.run_result(square, 7))": "49\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n332833500\nTrue\n",
    "import concurrent.futures": "[0, 1, 4, 9, 16]\n[0, 1, 4, 9, 16]\n",
    "import joblib": "[0, 1, 4, 9, 16, 25, 36, 49]\n",
    "with LocalCluster(cpus=1)": "[1, 4, 9]\n",
}


@pytest.fixture
def workdir():
    w = Workdir()
    yield w
    w.cleanup()


def stdout_of(cell):
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_notebook_runs_and_its_cells_rerun_in_one_kernel(workdir):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": workdir.path}})
    seen = {key: [] for key in RERUN}
    with client.setup_kernel(env=workdir.env()):
        kernel = client.km.provisioner.process
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            key = next((k for k in RERUN if cell.source.startswith(k)), None)
            for _ in range(3 if key else 1):
                client.execute_cell(cell, index)
                out = stdout_of(cell)
                if key:
                    seen[key].append(out)
            if cell.source.startswith("cluster = LocalCluster"):
                assert stdout_of(cell) == "2 servers\n"
    assert seen == {key: [text] * 3 for key, text in RERUN.items()}
    # nbclient asked the kernel to shut down: it exited by itself (not killed), status 0.
    assert kernel.wait(30) == 0
    assert_clean(workdir)


def execute(kc, code, timeout=120):
    """Run C{code} in the kernel; (reply content, stdout text)."""
    out = []

    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(out)


SETUP = """
import os, time
from dispycos.blocking import Computation, LocalCluster

def long_task(marker, seconds):
    open(marker, "w").close()
    try:
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(0.05)
        return "finished"
    except BaseException as e:
        with open(marker + ".end", "w") as f:
            f.write(type(e).__name__)
        raise

def square(n):
    return n * n

cluster = LocalCluster(cpus=1).start()
comp = Computation([long_task, square])
comp.schedule()
print(cluster.pid)
"""


def test_jupyter_interrupt_stops_the_call_and_the_computation_goes_on(workdir):
    from jupyter_client.manager import start_new_kernel

    marker = os.path.join(workdir.path, "started")
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120, env=workdir.env(), cwd=workdir.path)
    kernel = km.provisioner.process
    try:
        reply, out = execute(kc, SETUP)
        assert reply["status"] == "ok", reply
        node_pid = int(out)
        msg_id = kc.execute("comp.run_result(long_task, %r, 30)" % marker)
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert time.monotonic() < deadline and kernel.poll() is None, "the task did not start"
            time.sleep(0.05)
        km.interrupt_kernel()  # what Jupyter's "interrupt" does: SIGINT to the kernel's process group
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["status"] == "error", reply["content"]
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        # The task was terminated on its server.
        while not os.path.exists(marker + ".end"):
            assert time.monotonic() < deadline, "the task was not terminated"
            time.sleep(0.05)
        with open(marker + ".end") as f:
            assert f.read() == "TaskTerminated"
        # The node (own process group) was not hit; its one server is free again.
        reply, out = execute(kc, "print(os.path.exists('/proc/%d'), comp.run_result(square, 5))" % node_pid)
        assert (reply["status"], out) == ("ok", "True 25\n"), (reply, out)
    finally:
        kc.stop_channels()
        # Left open: the kernel's exit closes the computation and stops the cluster.
        km.shutdown_kernel(now=False)
    assert kernel.wait(30) == 0  # it exited by itself, in time (not killed)
    assert_clean(workdir)
