"""Moved to lime_jax/tools/sample.py: run `python -m lime_jax.tools.sample`. Running (or importing) this old
path exits with status 2 and says so."""

import sys

_MESSAGE = "lime_jax.sample moved: run python -m lime_jax.tools.sample <same args>"
print(_MESSAGE, file=sys.stderr)
_moved = SystemExit(_MESSAGE)  # the message for a caller that catches it ...
_moved.code = 2  # ... and status 2 (usage error) for the shell: the message is printed above
raise _moved
