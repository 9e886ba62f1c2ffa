"""The glibc mmap threshold: fixed where the C library has mallopt, left alone elsewhere."""

from __future__ import annotations

import ctypes.util
import gc
import platform
import weakref

import pytest

from okx_loan_exporter.memory import (
    freeze_long_lived_objects,
    keep_large_buffers_out_of_the_heap,
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_threshold():
    assert keep_large_buffers_out_of_the_heap() is True


def test_a_c_library_without_mallopt_or_none_at_all_is_left_alone(tmp_path, monkeypatch):
    assert keep_large_buffers_out_of_the_heap(str(tmp_path / "no-such-libc.so")) is False
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert keep_large_buffers_out_of_the_heap() is False


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_long_lived_objects_are_frozen_and_given_back_at_the_next_freeze():
    try:
        node = Node()
        gone = weakref.ref(node)
        assert freeze_long_lived_objects() > 0
        assert gc.is_tracked(node) and gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert gone() is not None  # frozen: full collections leave it alone
        freeze_long_lived_objects()  # as after a reload that dropped it
        assert gone() is None
    finally:
        gc.unfreeze()  # the test process goes on collecting as usual
