"""
dispycos.node.sharing: what a process does before forking so its pages stay
shared. The vacancy table comes from CPython's C{sys._debugmallocstats()}: the
first test fails loudly when a CPython release changes what it prints.
"""

import gc
import platform

import pytest

from dispycos.node import sharing

cpython = pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's allocator")


@cpython
def test_the_allocator_table_is_read():
    vacancies = sharing.pool_vacancies()
    # CPython 3.8+: size classes of 16 (or 8) bytes up to 512.
    assert 512 in vacancies and 64 in vacancies, vacancies
    assert all(isinstance(v, int) and v >= 0 for v in vacancies.values())


@cpython
def test_filling_occupies_the_free_blocks_of_used_pools():
    size = 208  # a size class: bytes objects of 208 - header bytes
    length = size - sharing._BYTES_HEADER
    keep = [bytes(length) + b"" for _ in range(20000)]
    del keep[::2]  # 10,000 free blocks, scattered over the pools in use
    before = sharing.pool_vacancies()[size]
    assert before >= 10000, before
    try:
        made = sharing.fill_pools()
        after = sharing.pool_vacancies()[size]
        assert made >= before
        # What is left free is at most one fresh pool's worth (16 KiB pools; 4 KiB on old CPythons).
        assert after < 16384 // size, (before, after)
    finally:
        del sharing._fillers[:]


def test_prepare_fork_freezes_the_collector(monkeypatch):
    filled, trimmed = [], []
    monkeypatch.setattr(sharing, "fill_pools", lambda: filled.append(1))
    monkeypatch.setattr(sharing, "trim_heap", lambda: trimmed.append(1))
    try:
        sharing.prepare_fork()
        assert gc.get_freeze_count() > 0
        assert filled == trimmed == [1]
    finally:
        gc.unfreeze()


def test_no_table_means_no_filling(monkeypatch):
    monkeypatch.delattr("sys._debugmallocstats", raising=False)
    assert sharing.pool_vacancies() == {}
    assert sharing.fill_pools() == 0
