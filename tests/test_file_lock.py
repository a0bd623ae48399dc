"""``cmraudit.io.exclusive_lock``: results.json's writers exclude each other, on POSIX and (simulated) Windows."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from cmraudit.io import exclusive_lock

HOLDER = """
import sys
from cmraudit.io import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()  # hold it until told to let go
"""


@pytest.mark.skipif(sys.platform == "win32", reason="checks the lock with fcntl")
def test_a_lock_held_by_another_process_excludes_this_one(tmp_path):
    import fcntl

    lock = tmp_path / "sub" / "results.json.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(lock, "a+b") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.communicate("\n", timeout=60)
    with exclusive_lock(lock):  # released when the holder let go
        with open(lock, "a+b") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_on_windows_the_first_byte_is_locked_and_a_timed_out_attempt_retried(tmp_path, monkeypatch):
    calls = []

    def locking(fd, mode, nbytes):
        calls.append((mode, nbytes))
        if mode == fake.LK_LOCK and len(calls) == 1:
            raise OSError(36, "Resource deadlock avoided")  # what LK_LOCK raises after its ten one-second tries

    fake = types.SimpleNamespace(LK_LOCK=1, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(sys, "platform", "win32")
    with exclusive_lock(tmp_path / "results.json.lock"):
        assert calls == [(1, 1), (1, 1)]
    assert calls[-1] == (0, 1) and (tmp_path / "results.json.lock").exists()
