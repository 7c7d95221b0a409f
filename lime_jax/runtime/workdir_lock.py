"""One training run per workdir: `WORKDIR/lock.json`, held for the run's life.

Local workdirs: an exclusive `fcntl.flock` on lock.json (which names the holder: host, pid, start time,
command). The kernel drops the lock when the holder exits however it exits (SIGKILL, crash), so a stale
file never blocks a new run; the new holder overwrites it and says whose lock it recovered. On NFS, flock
is a lock-manager lock (released by the server's lease recovery when a client dies).

URLs (gs://, no locks): lock.json is written with a heartbeat refreshed every `HEARTBEAT_S` seconds; a
holder whose heartbeat is older than `STALE_AFTER_S` (or, on this host, whose pid is gone) is stale and
taken over. Two runs started within the same second on a bucket can both pass (best effort).

Multi-process runs: process 0 takes the lock and broadcasts the outcome and its token; every other process
then fails with process 0, or checks that lock.json holds that token. Readers (evaluate) never lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from etils import epath

from lime_jax.runtime.errors import UserError

LOCK_FILE = "lock.json"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirLockedError(UserError, RuntimeError):
  """Another run holds the workdir's lock."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    return True
  return True


def _holder_info(token: str) -> dict[str, Any]:
  now = time.time()
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
    "heartbeat": now,
    "token": token,
    "command": " ".join(sys.argv)[:500],
  }


def _read(path: epath.Path) -> dict[str, Any]:
  try:
    info = json.loads(path.read_text())
    return info if isinstance(info, dict) else {}
  except (OSError, ValueError):
    return {}


def describe_holder(info: dict[str, Any]) -> str:
  if not info.get("pid"):
    return "a run whose lock.json is being written"
  return (
    f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')} "
    f"({info.get('command', '?')})"
  )


def _refusal(workdir: str, info: dict[str, Any]) -> WorkdirLockedError:
  return WorkdirLockedError(
    f"--workdir {workdir} is in use by another training run: {describe_holder(info)}. Wait for it to "
    f"finish or stop it (kill {info.get('pid', 'PID')}), or use another --workdir (evaluate reads a "
    "workdir without locking it)."
  )


def _is_stale(info: dict[str, Any], now: float) -> bool:
  if not info.get("pid"):
    return True
  if info.get("host") == socket.gethostname() and not _pid_alive(int(info["pid"])):
    return True
  return now - float(info.get("heartbeat", 0.0)) > STALE_AFTER_S


class WorkdirLock:
  """A held lock; `release()` (idempotent) gives it back."""

  def __init__(self, workdir: str, token: str, fd: int | None, path: epath.Path | None):
    self.workdir, self.token, self._fd, self._path = workdir, token, fd, path
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    if fd is None and path is not None:  # a URL: keep the heartbeat fresh
      self._thread = threading.Thread(target=self._beat, name="lime_jax-lock-heartbeat", daemon=True)
      self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      info = _read(self._path)
      if info.get("token") == self.token:
        self._path.write_text(json.dumps({**info, "heartbeat": time.time()}))

  def release(self) -> None:
    self._stop.set()
    if self._fd is not None:
      with contextlib.suppress(OSError):
        os.ftruncate(self._fd, 0)  # an empty file: released (a non-empty unlocked one: a crashed holder)
      os.close(self._fd)  # closing drops the flock
      self._fd = None
    elif self._path is not None:
      if _read(self._path).get("token") == self.token:
        with contextlib.suppress(OSError):
          self._path.unlink()
      self._path = None


def _acquire_local(workdir: str, token: str, log: Callable[[str], None]) -> WorkdirLock:
  import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)

  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise _refusal(workdir, _read(epath.Path(path))) from None
    log(f"Warning: cannot lock {path} ({e}); a second run on this workdir would not be refused.")
    return WorkdirLock(workdir, token, None, None)
  previous = _read(epath.Path(path))
  if previous.get("pid"):
    log(f"Recovered the lock of a run that is no longer running ({describe_holder(previous)}).")
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(_holder_info(token), indent=1).encode(), 0)
  os.fsync(fd)
  return WorkdirLock(workdir, token, fd, None)


def _acquire_url(workdir: str, token: str, log: Callable[[str], None]) -> WorkdirLock:
  path = epath.Path(workdir) / LOCK_FILE
  previous = _read(path) if path.exists() else {}
  if previous and not _is_stale(previous, time.time()):
    raise _refusal(workdir, previous)
  if previous.get("pid"):
    log(f"Took over the stale lock of {describe_holder(previous)} (no heartbeat for {STALE_AFTER_S:.0f} s).")
  path.write_text(json.dumps(_holder_info(token), indent=1))
  if _read(path).get("token") != token:  # another run wrote between our read and write
    raise _refusal(workdir, _read(path))
  return WorkdirLock(workdir, token, None, path)


def acquire(workdir: str, log: Callable[[str], None] = print) -> WorkdirLock:
  """Takes `workdir`'s lock (see the module docstring); raises WorkdirLockedError naming the holder."""
  import jax  # pylint: disable=import-outside-toplevel

  token = uuid.uuid4().hex
  lock, refusal = None, None
  if jax.process_index() == 0:
    try:
      lock = (_acquire_url if "://" in str(workdir) else _acquire_local)(str(workdir), token, log)
    except WorkdirLockedError as e:
      refusal = e
  if jax.process_count() > 1:
    lock, refusal = _agree(workdir, lock, refusal, token)
  if refusal is not None:
    raise refusal
  return lock


def _agree(workdir: str, lock: Any, refusal: Any, token: str) -> tuple[Any, Any]:
  """Multi-process: process 0's outcome and token reach every process; the others check lock.json."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  mine = np.frombuffer(bytes.fromhex(token), np.uint8) if lock is not None else np.zeros(16, np.uint8)
  agreed = np.asarray(multihost_utils.broadcast_one_to_all(mine))
  if jax.process_index() == 0:
    return lock, refusal
  if not agreed.any():
    return None, WorkdirLockedError(f"process 0 could not lock --workdir {workdir} (see its message).")
  shared = _read(epath.Path(workdir) / LOCK_FILE)
  if shared and shared.get("token") != bytes(agreed).hex():
    return None, _refusal(workdir, shared)
  return WorkdirLock(workdir, bytes(agreed).hex(), None, None), None


@contextlib.contextmanager
def held(workdir: str, log: Callable[[str], None] = print) -> Iterator[WorkdirLock]:
  """`acquire`, released on leaving the block (also on errors; a killed process loses it anyway)."""
  lock = acquire(workdir, log)
  try:
    yield lock
  finally:
    lock.release()
