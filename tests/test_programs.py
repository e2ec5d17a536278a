"""
External programs driven over pipes by remote tasks (real node and server).
"""

import os

import pytest_twisted

from dispycos import Computation, Scheduler

PROGRAM = r"""
import sys
bad = 0
for line in sys.stdin:
    line = line.strip()
    try:
        print("square", int(line) ** 2, flush=True)
    except ValueError:
        bad += 1
        print("bad", line, flush=True)
sys.exit(bad)
"""


def drive(numbers, task=None):
    import sys

    prog = task.run_program([sys.executable, "-u", os.path.join("..", "squarer.py")])
    lines = []
    for n in numbers:
        prog.writeline(n)
        lines.append((yield prog.readline()))
    prog.close_stdin()
    tail = yield prog.readline()
    code = yield prog.wait()
    return lines, tail, code


def drive_blocking(numbers, task=None):
    import sys

    prog = task.run_program([sys.executable, "-u", os.path.join("..", "squarer.py")])
    lines = []
    for n in numbers:
        prog.writeline(n)
        lines.append(prog.readline())
    prog.close_stdin()
    return lines, prog.wait()


@pytest_twisted.ensureDeferred
async def test_program_driven_line_by_line_returns_exit_code(node, tmp_path):
    script = tmp_path / "squarer.py"
    script.write_text(PROGRAM)
    cwd = os.getcwd()
    os.chdir(str(tmp_path))
    try:
        comp = Computation([drive, drive_blocking, "squarer.py"])
    finally:
        os.chdir(cwd)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    try:
        await comp.schedule(timeout=30)
        lines, tail, code = await comp.run_result(drive, [1, 2, "x", 4])
        assert lines == ["square 1", "square 4", "bad x", "square 16"]
        assert tail is None and code == 1
        lines, code = await comp.run_result(drive_blocking, [3, "y", "z"])
        assert lines == ["square 9", "bad y", "bad z"] and code == 2
    finally:
        await comp.close()
        await scheduler.close()
