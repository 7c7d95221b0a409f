"""User errors vs bugs: what `main` prints as one line and what keeps its traceback.

A `UserError` (a bad config value, damaged or mismatched checkpoint, bad shard, locked workdir, NaN loss)
carries a message that names the field / file / step and the fix. `describe` also recognises the
failures of the machine under the run (disk full, read-only or unwritable workdir, device out of memory),
however deep in orbax or tensorstore they were raised, and a ValueError whose message names a
`config.<field>` (the project's convention for set-up errors). Anything else is a bug: None.
"""

from __future__ import annotations

import errno
import re


class UserError(Exception):
  """An error the user can fix; its message is complete (field / file / step and the fix)."""


class ConfigError(UserError, ValueError):
  """A config value out of range (`config.validate`)."""


class DoesNotFitError(UserError, ValueError):
  """Parameters (or a train state) larger than a device's memory on the mesh asked for; raised before
  anything is read or allocated (`sharding.check_fits`)."""


# (errno, text tensorstore / orbax put in their messages instead of the OSError) -> what to do.
_MACHINE = (
  (
    (errno.ENOSPC, errno.EDQUOT),
    ("No space left on device", "Disk quota exceeded", "[Errno 28]", "[Errno 122]"),
    "disk full",
    "free space on the workdir's disk (checkpoints/ keeps train.keep_checkpoints steps) and rerun the "
    "same command to resume from the last checkpoint",
  ),
  (
    (errno.EROFS,),
    ("Read-only file system", "[Errno 30]"),
    "read-only workdir",
    "use a writable --workdir (a finished run's checkpoints can still be read by lime_jax.evaluate)",
  ),
  (
    (errno.EACCES, errno.EPERM),
    ("Permission denied", "PERMISSION_DENIED", "[Errno 13]"),
    "permission denied",
    "make the --workdir writable by this user, or use another one",
  ),
  (
    (),
    ("RESOURCE_EXHAUSTED: Out of memory", "Out of memory while trying to allocate"),
    "out of device memory",
    "lower train.batch_size or data.seq_len, or set model.remat_policy='full' "
    "(python -m lime_jax.tools.info shows the memory a config needs)",
  ),
)


def chain(error: BaseException) -> list[BaseException]:
  """`error` and its causes / contexts, outermost first (each once)."""
  out: list[BaseException] = []
  while error is not None and error not in out:
    out.append(error)
    error = error.__cause__ or error.__context__
  return out


def _first_line(error: BaseException) -> str:
  text = str(error).split("[tensorstore_spec")[0].strip()
  return text.splitlines()[0][:400] if text else type(error).__name__


def describe(error: BaseException) -> str | None:
  """One message for a user error anywhere in `error`'s chain (see the module docstring), else None."""
  errors = chain(error)
  for e in errors:
    if isinstance(e, UserError):
      return str(e)
  for codes, texts, what, fix in _MACHINE:
    for e in errors:
      text = str(e)
      if (isinstance(e, OSError) and e.errno in codes) or any(t in text for t in texts):
        return f"{what}: {_first_line(e)}. Fix: {fix}."
  for e in errors:
    if isinstance(e, (ValueError, FileNotFoundError)) and re.search(r"config\.[a-z_]+", str(e)):
      return str(e)
  return None
