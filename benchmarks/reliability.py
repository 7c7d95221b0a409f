"""End-to-end reliability of `python -m lime_jax.main`: kills, silent corruption, concurrent runs, bad
data, a full disk, a read-only workdir. Prints one table row per case (docs/reliability.md).

  python benchmarks/reliability.py [--spec experiments/baseline.py:tiny] [--steps 600] [--every 50]
      [--kills 3] [--flips 32] [--cases sigkill corruption ...] [--out DIR]

Every case runs the real binary in a subprocess and compares with one clean run of the same config:
- sigkill: SIGKILL at random moments (one as soon as an async save is in flight), then a resume: every
  parameter and optimizer value equal to the clean run's, one metrics record per step.
- corruption: 4 bytes flipped at `--flips` random offsets of the final step's array data files: each must
  fail the step's digests; end to end, one flipped copy is resumed (exit 0, step moved aside, equal state).
- concurrency: two runs started together on one workdir (one refuses at once naming the other), and a
  second run with another learning rate started while the first trains (refused; config.json kept).
- empty data: an empty and a blank-lines .jsonl as data.text.files: exit 1 naming the file, no hang.
- disk full: a 1.5 MB tmpfs workdir (mount; as root, or in a user namespace via `unshare -Urm`): one
  FATAL line; after the tmpfs grows, the same command resumes to the clean run's state.
- read-only: a finished run's workdir bind-mounted read-only: one FATAL line naming it.
`--cases` picks some of: sigkill corruption concurrency empty_data disk_full read_only (default: all).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from lime_jax import checkpoint as ckpt_lib  # noqa: E402

ROWS: list[tuple[str, str, bool]] = []  # (case, what happened, as required)


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_"))}
  return {**env, "JAX_PLATFORMS": "cpu"}


def command(args: argparse.Namespace, workdir: str, *extra: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "lime_jax.main",
    f"--config={args.spec}",
    f"--workdir={workdir}",
    f"--config.train.num_steps={args.steps}",
    f"--config.train.checkpoint_every={args.every}",
    "--config.train.log_every=1",
    *extra,
  ]


def start(cmd: list[str], log: str) -> subprocess.Popen:
  return subprocess.Popen(
    cmd, cwd=REPO, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
  )


def run(cmd: list[str], log: str, timeout: float = 600) -> tuple[int, str, float]:
  """(exit code, output, seconds); a run past `timeout` is killed and reported as code -9."""
  begin = time.perf_counter()
  proc = start(cmd, log)
  try:
    code = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
  with open(log, encoding="utf-8") as f:
    return code, f.read(), time.perf_counter() - begin


def record(case: str, what: str, ok: bool) -> None:
  ROWS.append((case, what, ok))
  print(f"[{'ok' if ok else 'FAIL'}] {case}: {what}", flush=True)


def same_state(a: str, b: str, step: int) -> bool:
  """Every leaf of the two runs' checkpoints at `step` equal, bit for bit."""
  try:
    leaves_a = jax.tree.leaves(ckpt_lib.restore_raw_state(a, step)[1])
    leaves_b = jax.tree.leaves(ckpt_lib.restore_raw_state(b, step)[1])
  except Exception:  # pylint: disable=broad-except  (a missing or damaged step: not equal)
    return False
  return len(leaves_a) == len(leaves_b) and all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)
  )


def one_record_per_step(workdir: str, steps: int) -> bool:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return [r["step"] for r in records if r["split"] == "train"] == list(range(1, steps + 1))


def fatal_only(output: str) -> bool:
  """The output ends in one FATAL line and holds no traceback."""
  lines = output.strip().splitlines()
  return bool(lines) and lines[-1].startswith("FATAL: ") and "Traceback" not in output


# ---------------------------------------------------------------------------------------------- cases
def last_logged_step(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f if line.endswith("\n") and '"train"' in line]
  return max(steps, default=0)


def save_in_flight(workdir: str) -> bool:
  ckpts = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpts) and any("tmp" in name for name in os.listdir(ckpts))


def case_sigkill(args, root: str, clean: str) -> None:
  """Each kill lands at a random step of the remaining run; the first once a save is in flight."""
  workdir, rng = os.path.join(root, "sigkill"), random.Random(args.seed)
  kills = []
  for k in range(args.kills):
    begun = last_logged_step(workdir)
    target = rng.randint(begun + 1, begun + (args.steps - begun) // 2)
    proc = start(command(args, workdir), os.path.join(root, f"sigkill{k}.log"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and last_logged_step(workdir) < target:
      time.sleep(0.002)
    while k == 0 and time.time() < deadline and proc.poll() is None and not save_in_flight(workdir):
      time.sleep(0.001)
    in_flight = save_in_flight(workdir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kills.append(f"step {last_logged_step(workdir)}{' (save in flight)' if in_flight else ''}")
  code, _, _ = run(command(args, workdir), os.path.join(root, "sigkill_final.log"))
  ok = code == 0 and same_state(workdir, clean, args.steps) and one_record_per_step(workdir, args.steps)
  record(
    f"SIGKILL x{args.kills}",
    f"killed at {', '.join(kills)}; resumed: exit {code}, state == clean run's and one metrics record per "
    f"step: {ok}",
    ok,
  )


def case_corruption(args, root: str, clean: str) -> None:
  rng = random.Random(args.seed)
  detected, copy = 0, os.path.join(root, "flip")
  for _ in range(args.flips):
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(clean, copy, ignore=shutil.ignore_patterns("lock.json"))
    data = os.path.join(copy, "checkpoints", str(args.steps), "state", "ocdbt.process_0", "d")
    path = os.path.join(data, rng.choice(sorted(os.listdir(data))))
    blob = bytearray(open(path, "rb").read())
    offset = rng.randrange(0, max(1, len(blob) - 4))
    for i in range(offset, min(offset + 4, len(blob))):
      blob[i] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    step_dir = os.path.join(copy, "checkpoints", str(args.steps))
    detected += ckpt_lib.digest_damage(step_dir, ("state", "meta", "data")) is not None
  record(
    "corruption: 4 bytes flipped",
    f"{detected}/{args.flips} random flips fail the digests",
    detected == args.flips,
  )
  code, out, _ = run(command(args, copy), os.path.join(root, "flip.log"))
  line = next((l for l in out.splitlines() if "is damaged" in l), "")
  ok = code == 0 and "sha256 differs" in line and same_state(copy, clean, args.steps)
  record("corruption: resume", f"exit {code}; '{line[:90]}...'; final state == clean run's: {ok}", ok)


def case_concurrency(args, root: str, clean: str) -> None:
  workdir = os.path.join(root, "together")
  procs = [start(command(args, workdir), os.path.join(root, f"together{i}.log")) for i in range(2)]
  codes = [p.wait(timeout=600) for p in procs]
  outs = [open(os.path.join(root, f"together{i}.log"), encoding="utf-8").read() for i in range(2)]
  refused = [i for i, o in enumerate(outs) if "is in use by another training run: pid" in o]
  ok = sorted(codes) == [0, 1] and len(refused) == 1 and fatal_only(outs[refused[0]])
  ok = ok and one_record_per_step(workdir, args.steps) and same_state(workdir, clean, args.steps)
  record(
    "two runs started together",
    f"exit codes {codes}; one refused naming the other; one record per step: {ok}",
    ok,
  )

  workdir = os.path.join(root, "staggered")
  first = start(command(args, workdir), os.path.join(root, "staggered0.log"))
  while not os.path.exists(os.path.join(workdir, "metrics.jsonl")) and first.poll() is None:
    time.sleep(0.1)
  code, out, seconds = run(
    command(args, workdir, "--config.train.learning_rate=0.01"), os.path.join(root, "staggered1.log")
  )
  first_code = first.wait(timeout=600)
  lr = json.load(open(os.path.join(workdir, "config.json")))["train"]["learning_rate"]
  ok = (
    code == 1
    and fatal_only(out)
    and first_code == 0
    and lr != 0.01
    and same_state(workdir, clean, args.steps)
  )
  record(
    "second run, other lr, while the first trains",
    f"refused in {seconds:.1f} s (exit {code}); first exit {first_code}; config.json lr {lr}; state == clean",
    ok,
  )


def case_empty_data(args, root: str, clean: str) -> None:
  del clean
  for name, content in (("empty", ""), ("blank", "\n\n   \n\n")):
    shard = os.path.join(root, f"{name}.jsonl")
    with open(shard, "w", encoding="utf-8") as f:
      f.write(content)
    val = os.path.join(root, "val.jsonl")
    with open(val, "w", encoding="utf-8") as f:
      f.write("".join(json.dumps({"text": f"held out {i} " * 8}) + "\n" for i in range(20)))
    extra = [
      "--config.data.task=text",
      "--config.data.seq_len=16",
      "--config.data.text.source=files",
      f"--config.data.text.files={shard}",
      f"--config.data.text.eval_files={val}",
      "--config.eval.greedy=False",
    ]
    code, out, seconds = run(
      command(args, os.path.join(root, name), *extra), os.path.join(root, f"{name}.log"), 120
    )
    ok = code == 1 and fatal_only(out) and shard in out.strip().splitlines()[-1]
    record(
      f"{name} training shard", f"exit {code} after {seconds:.1f} s: {out.strip().splitlines()[-1][:110]}", ok
    )


def _mount_shell(script: str) -> subprocess.CompletedProcess:
  """Runs a shell script that mounts: directly as root, else in a user + mount namespace."""
  prefix = [] if os.geteuid() == 0 else ["unshare", "-Urm"]
  return subprocess.run(
    [*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=1200, env=_env()
  )


def case_disk_full(args, root: str, clean: str) -> None:
  mnt, keep = os.path.join(root, "tmpfs"), os.path.join(root, "disk_full_run")
  os.makedirs(mnt)
  cmd = " ".join(command(args, f"{mnt}/run"))
  script = (
    f"mount -t tmpfs -o size=1500k tmpfs {mnt} || exit 99; "
    f"{cmd} > {root}/full1.log 2>&1; echo $? > {root}/full1.rc; mount -o remount,size=64m {mnt}; "
    f"{cmd} > {root}/full2.log 2>&1; echo $? > {root}/full2.rc; "
    f"cp -r {mnt}/run {keep}; umount {mnt}"
  )
  proc = _mount_shell(script)
  if proc.returncode == 99 or not os.path.exists(f"{root}/full1.rc"):
    record("disk full", f"skipped: cannot mount a tmpfs here ({proc.stderr.strip()[:80]})", True)
    return
  codes = [int(open(f"{root}/full{i}.rc").read()) for i in (1, 2)]
  out = open(f"{root}/full1.log", encoding="utf-8").read()
  ok = codes == [1, 0] and fatal_only(out) and same_state(keep, clean, args.steps)
  lines = len([line for line in out.strip().splitlines() if not line.startswith("[ ")])
  record(
    "disk full (1.5 MB tmpfs), then space freed",
    f"exit {codes[0]}, {lines} lines besides progress, no traceback: "
    f"{out.strip().splitlines()[-1][:70]}...; resumed exit {codes[1]}, state == clean",
    ok,
  )


def case_read_only(args, root: str, clean: str) -> None:
  ro = os.path.join(root, "ro")
  os.makedirs(ro)
  cmd = " ".join(command(args, ro))
  script = (
    f"mount --bind {clean} {ro} && mount -o remount,bind,ro {ro} || exit 99; "
    f"{cmd} > {root}/ro.log 2>&1; echo $? > {root}/ro.rc; umount {ro}"
  )
  proc = _mount_shell(script)
  if proc.returncode == 99 or not os.path.exists(f"{root}/ro.rc"):
    record("read-only workdir", f"skipped: cannot bind-mount here ({proc.stderr.strip()[:80]})", True)
    return
  code, out = int(open(f"{root}/ro.rc").read()), open(f"{root}/ro.log", encoding="utf-8").read()
  ok = code == 1 and fatal_only(out) and "read-only workdir" in out
  record("read-only workdir", f"exit {code}: {out.strip().splitlines()[-1][:100]}", ok)


CASES = {
  "sigkill": case_sigkill,
  "corruption": case_corruption,
  "concurrency": case_concurrency,
  "empty_data": case_empty_data,
  "disk_full": case_disk_full,
  "read_only": case_read_only,
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--spec", default="experiments/baseline.py:tiny")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--every", type=int, default=50)
  parser.add_argument("--kills", type=int, default=3)
  parser.add_argument("--flips", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  logging.set_verbosity(logging.ERROR)  # orbax's notes on the items restore_raw_state leaves out
  root = args.out or tempfile.mkdtemp(prefix="lime_reliability_")
  os.makedirs(root, exist_ok=True)
  clean = os.path.join(root, "clean")
  begin = time.perf_counter()
  code, _, seconds = run(command(args, clean), os.path.join(root, "clean.log"))
  assert code == 0, f"the clean run failed: {root}/clean.log"
  print(
    f"clean run: {seconds:.1f} s ({args.spec}, {args.steps} steps, checkpoints every {args.every})",
    flush=True,
  )
  for name in args.cases:
    CASES[name](args, root, clean)
  total = time.perf_counter() - begin
  print(f"\n{args.spec}, {args.steps} steps, checkpoints every {args.every}; {total:.0f} s; logs in {root}\n")
  print("| case | what happened | as required |\n|---|---|---|")
  for case, what, ok in ROWS:
    print(f"| {case} | {what} | {'yes' if ok else '**no**'} |")
  sys.exit(0 if all(ok for _, _, ok in ROWS) else 1)


if __name__ == "__main__":
  main()
