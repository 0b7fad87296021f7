"""tritonserver's environment preloads jemalloc (runtime/server.py, ALLOCATOR): with glibc's malloc
a use-after-free in its trace API now and then killed it."""

from __future__ import annotations

import ctypes.util
import logging

import pytest

from runtime import server
from runtime.server import server_environment


def test_the_server_preloads_jemalloc_before_an_operators_own_preloads() -> None:
    env = server_environment({"PATH": "/bin", "LD_PRELOAD": "libfoo.so libjemalloc.so.2:libbar.so"})
    assert env["LD_PRELOAD"].split(":") == ["libjemalloc.so.2", "libfoo.so", "libbar.so"]
    assert server_environment({"PATH": "/bin"})["LD_PRELOAD"] == "libjemalloc.so.2"


def test_without_jemalloc_the_server_runs_on_glibcs_malloc_and_says_why_it_should_not(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with caplog.at_level(logging.WARNING, logger=server.log.name):
        env = server_environment({"PATH": "/bin", "LD_PRELOAD": "libfoo.so"})
    assert env["LD_PRELOAD"] == "libfoo.so"
    assert "libjemalloc is not installed" in caplog.text
    assert "libjemalloc2" in caplog.text


def test_the_soak_benchmark_can_run_the_server_on_glibcs_malloc_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=server.log.name):
        env = server_environment({"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}, allocator=None)
    assert env["LD_PRELOAD"] == "libfoo.so"
    assert "LD_PRELOAD" not in server_environment({"PATH": "/bin"}, allocator=None)
    assert caplog.text == ""
