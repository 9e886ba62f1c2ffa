"""The glibc mmap threshold: fixed where the C library has mallopt, left alone elsewhere."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from okx_loan_exporter.memory import keep_large_buffers_out_of_the_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_threshold():
    assert keep_large_buffers_out_of_the_heap() is True


def test_a_c_library_without_mallopt_or_none_at_all_is_left_alone(tmp_path, monkeypatch):
    assert keep_large_buffers_out_of_the_heap(str(tmp_path / "no-such-libc.so")) is False
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert keep_large_buffers_out_of_the_heap() is False
