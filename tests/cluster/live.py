"""The test cluster as Python tests see it: whether it is up, its kubeconfig, its kubectl.

``./dev cluster up`` (tests/cluster/cluster.sh) starts it; tests that need it skip with
``not_running()``'s reason when it is down, never fall back to something else.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("WAYLAY_CLUSTER_CACHE") or Path.home() / ".cache" / "waylay-cluster")
RUN = CACHE / "run"
KUBECONFIG = RUN / "admin.kubeconfig"
MANIFESTS = HERE / "manifests"


def not_running() -> str | None:
    """Why the cluster cannot be used (a skip reason), or None when every daemon runs."""
    if not KUBECONFIG.exists():
        return "the test cluster is not up (./dev cluster up, as root)"
    status = subprocess.run([str(HERE / "cluster.sh"), "status"], capture_output=True,
                            text=True, timeout=60, check=False)
    if status.returncode != 0:
        return f"the test cluster is not healthy:\n{status.stdout}{status.stderr}"
    return None


def bin_dir() -> Path:
    """Where the cluster's programs are (kubectl, ctr, ...)."""
    return Path((RUN / "bin").read_text().strip())


def kubectl(*args: str, stdin: str | None = None, kubeconfig: Path = KUBECONFIG,
            timeout: float = 120) -> str:
    """Run the cluster's kubectl; its stdout, or an AssertionError with its stderr."""
    done = subprocess.run([str(bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stderr}")
    return done.stdout
