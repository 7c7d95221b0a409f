"""When an entry point restarts itself with glibc's huge-page tunable (lime_jax/runtime/host_memory.py)."""

from lime_jax.runtime.host_memory import restart_reason

_THP_MADVISE = "always [madvise] never\n"
_GLIBC = ("glibc", "2.36")


def test_restarts_on_linux_glibc_with_thp_madvise():
  assert restart_reason({}, "Linux", _GLIBC, _THP_MADVISE) is None
  assert restart_reason({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "Linux", _GLIBC, _THP_MADVISE) is None


def test_no_restart_where_it_cannot_help_or_is_done():
  assert "LIME_JAX_HUGE_PAGES=0" in restart_reason(
    {"LIME_JAX_HUGE_PAGES": "0"}, "Linux", _GLIBC, _THP_MADVISE
  )
  env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert "already" in restart_reason(env, "Linux", _GLIBC, _THP_MADVISE)
  assert "not Linux" in restart_reason({}, "Darwin", ("", ""), _THP_MADVISE)
  assert "not Linux" in restart_reason({}, "Linux", ("", ""), _THP_MADVISE)  # musl
  assert "2.35" in restart_reason({}, "Linux", ("glibc", "2.31"), _THP_MADVISE)
  assert "madvise" in restart_reason({}, "Linux", _GLIBC, "[always] madvise never\n")
  assert "unavailable" in restart_reason({}, "Linux", _GLIBC, "")
