"""waylay.core.system.loading: the kubernetes client imported from several threads at once.

Run in a fresh interpreter (the client must not be imported yet). Without the lock, two
threads meeting in the client's circular imports get "cannot import name 'ApiClient'"
(seen every time here with plain importlib.import_module).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, threading
from waylay.core.system.loading import load
assert "kubernetes" not in sys.modules
errors = []
def go(name):
    try:
        load(name)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=go, args=(n,)) for n in
           ("waylay.core.kube.discovery", "waylay.core.kube.attach", "waylay.core.kube.api",
           "waylay.core.kube.agent")]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


def test_concurrent_first_imports_all_succeed() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
