"""glibc malloc tuning (cmraudit.run.allocator): freed activation-sized buffers stay in the heap for reuse."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, sys
import torch
from cmraudit.run.allocator import malloc_tuned, tune_malloc

tuned = tune_malloc()
libc = ctypes.CDLL("libc.so.6")

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

mallinfo2 = getattr(libc, "mallinfo2", None)
mmapped = None
if mallinfo2 is not None:
    mallinfo2.restype = MallInfo2
    buffers = [torch.empty(8 * 1024 * 1024, dtype=torch.uint8) for _ in range(3)]  # an 8 MiB activation each
    mmapped = mallinfo2().hblkhd  # bytes in blocks glibc serves by mmap
    del buffers
print(json.dumps({"tuned": tuned, "recorded": malloc_tuned(), "mmapped": mmapped}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CMRAUDIT_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_tuned_malloc_serves_activation_sized_buffers_from_the_heap():
    tuned, default = _probe(), _probe(CMRAUDIT_MALLOC_TUNING="0")
    assert tuned["tuned"] and tuned["recorded"]
    assert not default["tuned"] and not default["recorded"]
    if tuned["mmapped"] is not None:  # mallinfo2: glibc >= 2.33
        # without tuning each 8 MiB buffer is a fresh mmap (page faults on first touch, munmap when freed)
        assert default["mmapped"] >= 3 * 8 * 1024 * 1024
        assert tuned["mmapped"] < 8 * 1024 * 1024


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_a_user_tuned_malloc_is_left_alone():
    assert not _probe(MALLOC_ARENA_MAX="2")["tuned"]
    assert _probe(LD_PRELOAD="")["tuned"]  # an empty preload is no other allocator
