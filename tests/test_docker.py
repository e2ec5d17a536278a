"""
The Dockerfile shipped as package data: no Docker engine runs here, so check
that its command and every option it and the README use exist.
"""

import json
import os
import re
import shlex

import dispycos
from dispycos.node.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(os.path.dirname(dispycos.__file__), "data", "Dockerfile")


def test_dockerfile_command_is_the_node_and_parses():
    text = open(DOCKERFILE).read()
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1))
    assert cmd[0] == "dispycosnode"
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert "dispycosnode = dispycos.scripts:node_main" in setup
    Options().parseOptions(cmd[1:])


def test_documented_docker_loops_use_real_options():
    texts = [open(DOCKERFILE).read(), open(os.path.join(ROOT, "README.rst")).read()]
    found = 0
    for text in texts:
        for line in text.splitlines():
            m = re.search(r"docker run .*? dispycos (dispycosnode .*?)(;|$)", line)
            if m:
                argv = shlex.split(m.group(1))[1:]
                o = Options()
                o.parseOptions(argv)
                if "--serve" in argv:
                    assert o["serve"] == 1
                found += 1
    assert found >= 2
