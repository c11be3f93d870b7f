"""A two-node Ray cluster on loopback for the Ray backend's tests and benchmark: a head (custom
resource `node1`) and a second `ray start` (`node2`), standing for a second machine.

Ray binds to the machine's external interface and probes public addresses to find it, so the
cluster must run where only loopback exists: `in_loopback_namespace` re-runs a command inside
`unshare -rn` (a user and network namespace with `lo` up). Every `ray` process started here has
the cluster's own temp folder in its command line, so what is left of it can be found by that
and nothing else (`leftover_pids`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RAY_BIN = Path(sys.executable).with_name("ray")
HEAD_PORT = 6379  # free: the namespace has its own ports
ADDRESS = f"127.0.0.1:{HEAD_PORT}"
START_TIMEOUT_S = 90.0


def unshare_available() -> str | None:
    """None when `unshare -rn` with `ip` works here, else why not (the reason to skip)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) for a loopback-only namespace"
    try:
        probe = subprocess.run(
            ["unshare", "-rn", "sh", "-c", "ip link set lo up"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -rn failed: {exc}"
    if probe.returncode != 0:
        return f"unprivileged network namespaces unavailable: {probe.stderr.decode()[-200:]}"
    if not RAY_BIN.exists():
        return f"ray is not installed next to {sys.executable} (pip install 'hyperflexis[ray]')"
    return None


def in_loopback_namespace(argv: Sequence[str]) -> list[str]:
    """`argv`, run inside a fresh network namespace whose only interface is loopback."""
    quoted = " ".join(_quote(a) for a in argv)
    return ["unshare", "-rn", "sh", "-c", f"ip link set lo up && exec {quoted}"]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ADDRESS}


def start_cluster(temp_dir: Path, cpus_per_node: int = 4) -> None:
    """The head and the second node; raises RuntimeError (after stopping) when one fails."""
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus_per_node)]
    common += ["--disable-usage-stats"]
    head = [str(RAY_BIN), "start", "--head", "--port", str(HEAD_PORT), *common]
    head += ["--temp-dir", str(temp_dir), "--include-dashboard", "false"]
    head += ["--resources", json.dumps({"node1": 8})]
    second = [str(RAY_BIN), "start", "--address", ADDRESS, *common]
    second += ["--resources", json.dumps({"node2": 8})]
    for argv in (head, second):
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=START_TIMEOUT_S, env=_env(), check=False
        )
        if done.returncode != 0:
            stop_cluster()
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr[-2000:]}")


def stop_cluster() -> None:
    subprocess.run(
        [str(RAY_BIN), "stop", "--force"], capture_output=True, timeout=60, env=_env(), check=False
    )


def leftover_pids(temp_dir: Path) -> list[int]:
    """Processes whose command line names the cluster's temp folder (its raylets, GCS, workers)."""
    found = []
    marker = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found
