"""Run as `python -m tests.helpers.print_tunables`: restarts like an entry point, then prints its pid and
GLIBC_TUNABLES (tests/integration/test_host_memory.py)."""

if __name__ == "__main__":
  from lime_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()
  import os

  print(os.getpid(), os.environ.get("GLIBC_TUNABLES", ""))
