"""Run an aarch64 artifact under ``qemu-aarch64`` with the sysroot that ``make arm-env`` builds.

``make arm-env`` (``scripts/arm-env.sh``) installs the cross toolchain and qemu-user from
Debian, unpacks a Python 3.11 aarch64 sysroot from Debian arm64 packages and installs the
aarch64 ``apache-tvm`` wheel and numpy into ``.arm-env/site``. :func:`run_aarch64` then runs
:mod:`graphpress.backends.tvm.run_artifact` with the aarch64 Python under qemu.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from graphpress.errors import GraphpressError

__all__ = ["arm_env_ready", "default_arm_env", "run_aarch64", "start_rpc_server"]


def default_arm_env() -> Path:
    """Where the arm env is: ``$GRAPHPRESS_ARM_ENV``, else the first complete ``.arm-env`` in the
    working directory or in the source checkout graphpress runs from (``make arm-env`` builds it
    there), else ``.arm-env`` in the working directory."""
    if os.environ.get("GRAPHPRESS_ARM_ENV"):
        return Path(os.environ["GRAPHPRESS_ARM_ENV"])
    candidates = [Path.cwd() / ".arm-env"]
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file():  # an editable install or a run from the sources
        candidates.append(checkout / ".arm-env")
    return next((c for c in candidates if (c / ".ready").is_file()), candidates[0])


def arm_env_ready(env_dir: str | os.PathLike | None = None) -> bool:
    """True when qemu-aarch64 and a complete arm env (``make arm-env``) are present."""
    env = Path(env_dir) if env_dir is not None else default_arm_env()
    return shutil.which("qemu-aarch64") is not None and (env / ".ready").is_file()


def _qemu_python(env: Path, script: Path, args: list[str], home: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``script`` with the arm env's Python under qemu."""
    sysroot = env / "sysroot"
    cmd = ["qemu-aarch64", "-L", str(sysroot), str(sysroot / "usr" / "bin" / "python3.11"), str(script), *args]
    proc_env = {
        "PYTHONPATH": str(env / "site"),
        "PYTHONHOME": str(sysroot / "usr"),
        "PYTHONNOUSERSITE": "1",
        "HOME": home,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS") or str(len(os.sched_getaffinity(0))),
    }
    return cmd, proc_env


def start_rpc_server(tracker: str, key: str, *, env_dir: str | os.PathLike | None = None, port: int = 9090, ready_timeout_s: float = 120) -> subprocess.Popen:
    """Start TVM's RPC server under qemu-aarch64 (the arm env's Python and TVM wheel) registered
    with the tracker at ``tracker`` (``HOST:PORT``) under ``key``, listening on 127.0.0.1 from
    ``port`` up; returns once the tracker lists it (the caller terminates the process).

    Raises:
        GraphpressError: no arm env, or the server did not register within ``ready_timeout_s``.
    """
    import time

    env = Path(env_dir) if env_dir is not None else default_arm_env()
    if not arm_env_ready(env):
        raise GraphpressError(f"{env}: no aarch64 environment; run 'make arm-env' first (needs apt and PyPI)")
    if not (env / "site" / "cloudpickle").is_dir():
        raise GraphpressError(f"{env}: made before it held the RPC server's wheels; run 'make arm-env' again")
    cmd, proc_env = _qemu_python(env, Path(__file__).with_name("rpc_server.py"), ["--tracker", tracker, "--key", key, "--port", str(port)], tempfile.gettempdir())
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads the server's chatter while it serves
    proc = subprocess.Popen(cmd, env=proc_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from tvm import rpc

    host, _, tracker_port = tracker.rpartition(":")
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            last = (log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise GraphpressError(f"the aarch64 RPC server under qemu exited ({last[:200]})")
        try:
            if rpc.connect_tracker(host, int(tracker_port)).summary()["queue_info"].get(key, {}).get("free", 0) >= 1:
                return proc
        except Exception:  # noqa: BLE001 - the tracker is not up yet
            pass
        time.sleep(1)
    proc.terminate()
    raise GraphpressError(f"the aarch64 RPC server under qemu did not register with the tracker at {tracker} within {ready_timeout_s:.0f} s")


def run_aarch64(
    artifact: str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    *,
    env_dir: str | os.PathLike | None = None,
    timeout_s: float = 600,
) -> dict[str, np.ndarray]:
    """Run an aarch64 artifact on ``feeds`` under qemu and return its outputs by name (with as many
    TVM threads as this process: ``TVM_NUM_THREADS`` or the CPUs it may use)."""
    env = Path(env_dir) if env_dir is not None else default_arm_env()
    if not arm_env_ready(env):
        raise GraphpressError(f"{env}: no aarch64 environment; run 'make arm-env' first (needs apt and PyPI)")
    runner = Path(__file__).with_name("run_artifact.py")
    with tempfile.TemporaryDirectory(prefix="graphpress-qemu-") as tmp:
        inputs, outputs = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inputs, **dict(feeds))
        cmd, proc_env = _qemu_python(env, runner, [str(artifact), str(inputs), str(outputs)], tmp)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=proc_env, timeout=timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise GraphpressError(f"{artifact}: running under qemu-aarch64 failed ({tail[:300]})")
        with np.load(outputs) as data:
            return {k: data[k] for k in data.files}
