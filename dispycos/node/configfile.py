# -*- test-case-name: tests.test_node_cli -*-
"""
C{--save_config FILE} / C{--config FILE} of C{dispycosnode}.

The file is JSON::

    {"format": "dispycosnode-config", "version": 1,
     "options": {"cpus": 0, "name": "nodeA", "secret": "...", "ip_addr": ["127.0.0.1"], ...}}

C{options} holds every option of the command line (secret and name
included; not C{config} and C{save_config} themselves) with the value it had
after parsing, so loading the file gives the same options back. Since it can
hold the secret, the file is written readable by its owner only, through a
fresh temporary that nothing planted can redirect (L{paths.replace_file}).

When loading, options given explicitly on the command line win over the
file's values; repeatable options given on the command line replace the
file's list rather than extend it.
"""

import json

from dispycos import paths

FORMAT = "dispycosnode-config"
VERSION = 1

#: Options never saved: they name the files themselves.
NOT_SAVED = ("config", "save_config")


class ConfigFileError(ValueError):
    """A configuration file cannot be read, or holds something unexpected."""


def save(path, values):
    """Write C{values} (a dict of option name to JSON-able value) to C{path}."""
    doc = {"format": FORMAT, "version": VERSION,
           "options": {k: v for k, v in sorted(values.items()) if k not in NOT_SAVED}}
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    paths.replace_file(path, text, 0o600)


def load(path, known=None):
    """
    The options saved in C{path}.

    @param known: if given, the option names allowed in the file.
    @raise ConfigFileError: unreadable file, not a saved configuration, or
        an unknown option.
    """
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise ConfigFileError("cannot read configuration file %s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise ConfigFileError("configuration file %s is not valid JSON: %s" % (path, e))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("options"), dict):
        raise ConfigFileError("%s is not a dispycosnode configuration file (written by --save_config)" % path)
    if doc.get("version") != VERSION:
        raise ConfigFileError("configuration file %s has unsupported version %r" % (path, doc.get("version")))
    values = {k: v for k, v in doc["options"].items() if k not in NOT_SAVED}
    if known is not None:
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigFileError("configuration file %s has unknown option(s): %s" % (path, ", ".join(unknown)))
    return values
