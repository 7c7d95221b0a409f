"""Workdir readers and writers accept gs:// URLs: every access goes through etils.epath.

A fake bucket: `epath.testing.mock_epath` routes every epath call on `gs://bucket/...` to a local folder,
so code that used `os.path` / `open` on the URL would look for a local file named 'gs:/bucket/...' and
fail (or write it in the working directory), while epath-based code reads and writes the fake bucket.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from etils import epath
from etils.epath import testing as epath_testing

from lime_jax import checkpoint
from lime_jax.probes import pretrained, runner
from lime_jax.runtime import fileio, workdir_lock
from lime_jax.tools import sweep

_TWO_PATHS = ("rename", "replace", "copy")
_ONE_PATH = ("exists", "isdir", "makedirs", "mkdir", "open", "listdir", "remove", "rmtree", "stat")


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """A fake gs://bucket stored under tmp_path/bucket; yields that local folder."""
  root = tmp_path / "bucket"
  root.mkdir()
  monkeypatch.chdir(tmp_path / "bucket")  # a stray local 'gs:' folder would land here, and be caught

  def remap(p):
    s = os.fspath(p)
    return str(root / s[len("gs://bucket/") :]) if s.startswith("gs://bucket") else s

  def one(orig, path, *args, **kwargs):
    return orig(remap(path), *args, **kwargs)

  def two(orig, a, b, *args, **kwargs):
    return orig(remap(a), remap(b), *args, **kwargs)

  fns = {**{n: one for n in _ONE_PATH}, **{n: two for n in _TWO_PATHS}}
  with epath_testing.mock_epath(**fns):
    yield root
  assert not (root / "gs:").exists(), "something wrote through os.path"


def test_helpers_keep_the_scheme():
  assert fileio.join("gs://b/run", "eval", "4") == "gs://b/run/eval/4"
  assert fileio.join("gs://b/run/", "/x") == "gs://b/run/x"
  assert fileio.absolute("gs://b/run") == "gs://b/run"
  assert fileio.absolute("rel") == os.path.abspath("rel")
  assert fileio.basename("gs://b/run/") == "run"


def test_runner_writes_and_reads_results_in_a_bucket(bucket):
  header = {
    "workdir": "gs://bucket/run",
    "step": "4",
    "created": "now",
    "devices": "1 x cpu",
    "config_digest": "d",
    "options": {"a": 1},
  }
  plot = {"name": "p", "title": "t", "series": [{"label": "s", "x": [1, 2], "y": [1.0, 2.0]}]}
  out = "gs://bucket/run/eval/4"
  first = {"entropy": {"metrics": {"x": 1}, "plots": [plot], "summary": [["q", 1]]}}
  runner.write_outputs(out, header, first)
  local = bucket / "run" / "eval" / "4"
  assert {"results.json", "summary.md", "p.png"} <= set(os.listdir(local))
  assert (local / "p.png").stat().st_size > 1000
  # a second invocation keeps the first probe (read back through epath)
  content = runner.write_outputs(out, header, {"collapse": {"metrics": {"y": 2}}})
  assert set(content["probes"]) == {"entropy", "collapse"}
  assert json.loads((local / "results.json").read_text())["probes"]["entropy"]["metrics"] == {"x": 1}
  runner.compare({"a": content, "b": content}, "gs://bucket/cmp")
  assert (bucket / "cmp" / "compare.md").exists() and (bucket / "cmp" / "compare.json").exists()


def test_restore_checks_the_bucket_not_the_local_disk(bucket):
  with pytest.raises(FileNotFoundError, match="'gs://bucket/missing' does not exist"):
    checkpoint.restore_params("gs://bucket/missing")
  (bucket / "run").mkdir()
  with pytest.raises(FileNotFoundError, match="expected gs://bucket/run/checkpoints"):
    checkpoint.restore_params("gs://bucket/run")


def test_sweep_reads_a_bucket_workdir(bucket):
  wd = bucket / "root" / "m0"
  wd.mkdir(parents=True)
  (wd / "final_metrics.json").write_text(
    json.dumps({"status": "completed", "train": {"loss": 0.5}, "eval": {"ce": 1.0, "exact_match": 0.25}})
  )
  (wd / "compile_report.json").write_text(json.dumps({"params": 123}))
  (wd / "metrics.jsonl").write_text(
    "\n".join(
      json.dumps({"split": "train", "step": s, "loss": 1.0 / s, "tokens_per_s": 10.0 * s}) for s in (1, 2, 3)
    )
  )
  member = sweep.Member("default", 0, ())
  remote = "gs://bucket/root/m0"
  assert sweep.is_finished(remote) and not sweep.is_finished("gs://bucket/root/none")
  row = sweep.member_summary(member, remote)
  assert row["params"] == 123 and row["final_train_loss"] == 0.5 and row["tokens_per_s"] == 25.0
  sweep.write_tables([row], "gs://bucket/root")
  assert "| member |" in (bucket / "root" / "results.md").read_text()
  assert (bucket / "root" / "results.csv").read_text().startswith("member,")
  fileio.append_text("gs://bucket/root/log.txt", "a\n")
  fileio.append_text("gs://bucket/root/log.txt", "b\n")
  assert (bucket / "root" / "log.txt").read_text() == "a\nb\n"


def test_hf_folder_in_a_bucket_is_copied_locally(bucket):
  (bucket / "hf").mkdir()
  (bucket / "hf" / "config.json").write_text("{}")
  (bucket / "hf" / "tokenizer.json").write_text('{"x": 1}')
  local = pretrained.local_folder("gs://bucket/hf")
  assert not local.startswith("gs:") and sorted(os.listdir(local)) == ["config.json", "tokenizer.json"]
  assert open(os.path.join(local, "tokenizer.json")).read() == '{"x": 1}'
  with pytest.raises(FileNotFoundError, match="--hf='gs://bucket/nothing' does not exist"):
    pretrained.local_folder("gs://bucket/nothing")
  assert isinstance(epath.Path("gs://bucket/hf"), epath.Path)


def test_workdir_lock_and_checkpoint_digests_on_a_bucket(bucket):
  """gs:// has no flock: the lock is a heartbeat file; digests list and hash the step through epath."""
  from lime_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from lime_jax.runtime import workdir_lock  # pylint: disable=import-outside-toplevel

  (bucket / "run").mkdir()
  lock = workdir_lock.acquire("gs://bucket/run")
  assert json.loads((bucket / "run" / "lock.json").read_text())["pid"] == os.getpid()
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()}"):
    workdir_lock.acquire("gs://bucket/run")
  lock.release()
  assert not (bucket / "run" / "lock.json").exists()

  step = bucket / "run" / "checkpoints" / "3"
  (step / "state" / "d").mkdir(parents=True)
  (step / "state" / "d" / "chunk").write_bytes(b"\x00\x01\x02\x03")
  (step / "_CHECKPOINT_METADATA").write_text("{}")
  url = "gs://bucket/run/checkpoints/3"
  assert sorted(ckpt_lib.write_digests(url)["files"]) == ["_CHECKPOINT_METADATA", "state/d/chunk"]
  assert ckpt_lib.digest_damage(url, ("state",)) is None
  (step / "state" / "d" / "chunk").write_bytes(b"\x00\x01\x02\x04")
  assert ckpt_lib.digest_damage(url, ("state",)).startswith(f"{url}/state/d/chunk (sha256 differs")


def test_without_flock_a_holder_is_stale_once_its_heartbeat_stops(bucket):
  """The gs:// scheme (no locks): a fresh heartbeat refuses, an old one is taken over."""
  (bucket / "run").mkdir()
  path = bucket / "run" / "lock.json"
  other = {"host": "other-host", "pid": 123, "started": "earlier", "heartbeat": time.time(), "token": "x"}
  path.write_text(json.dumps(other))
  with pytest.raises(workdir_lock.WorkdirLockedError, match="pid 123 on host other-host"):
    workdir_lock.acquire("gs://bucket/run", print)
  path.write_text(json.dumps({**other, "heartbeat": time.time() - workdir_lock.STALE_AFTER_S - 1}))
  lines: list[str] = []
  lock = workdir_lock.acquire("gs://bucket/run", lines.append)
  assert lines[0].startswith("Took over the stale lock of pid 123 on host other-host")
  assert json.loads(path.read_text())["token"] == lock.token
  lock.release()
  assert not path.exists()
