"""
Packaging of the blocking API's optional parts: the extra C{dispycos[joblib]}
and the test extra that its tests need (joblib, scikit-learn, a Jupyter kernel).
"""

import ast
import os

from .conftest import ROOT


def extras():
    """The C{extras_require} of setup.py, read without running it."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def names(requirements):
    return {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requirements}


def test_joblib_is_an_optional_extra():
    found = extras()
    assert names(found["joblib"]) == {"joblib"}


def test_the_test_extra_has_what_the_blocking_tests_use():
    assert {"joblib", "scikit-learn", "nbclient", "nbformat", "ipykernel", "jupyter_client"} <= names(extras()["test"])


def test_joblib_stays_optional_for_the_rest():
    """dispycos and dispycos.blocking import without joblib (only dispycos.joblib needs it)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['joblib'] = None\n"
            "import dispycos, dispycos.blocking, dispycos.client.executor\n"
            "try:\n    import dispycos.joblib\nexcept ImportError:\n    print('needs joblib')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (out.returncode, out.stdout) == (0, "needs joblib\n"), out.stderr
