"""The test cluster's images, built locally as OCI archives (no registry, no Docker).

    python tests/cluster/images.py --bin BIN --out DIR pause debian agent

prints the path of each archive, building the ones that are missing:

- ``pause``: ``localhost/waylay/pause:1``, the pod sandbox's image (containerd's
  ``pinned_images.sandbox``): our ``pause`` program (``k8s/cmd/pause``) alone.
- ``debian``: ``localhost/waylay/debian:bookworm``, a Debian minbase with python3, for test
  workloads (``python3 -m http.server``).
- ``agent``: ``docker.io/library/waylay-agent:0.1`` (what ``agent.image`` defaults to),
  built by ``waylay agent-image build`` from this checkout; always rebuilt when asked for
  with ``--rebuild-agent``, since the checkout changes.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from waylay.cli.agent_image import (  # noqa: E402 (the checkout's root is put on the path first)
    ImageConfig,
    build_agent_image,
    mmdebstrap_rootfs,
    normalize_reference,
    write_oci_archive,
)
from waylay.core.engine.config import DEFAULT_AGENT_IMAGE  # noqa: E402

PAUSE = "localhost/waylay/pause:1"
DEBIAN = "localhost/waylay/debian:bookworm"


def pause_image(bin_dir: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            for name in ("dev", "proc", "sys", "etc"):
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            for name in ("etc/resolv.conf", "etc/hostname", "etc/hosts"):
                tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
            info = tar.gettarinfo(str(bin_dir / "pause"), arcname="pause")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with (bin_dir / "pause").open("rb") as f:
                tar.addfile(info, f)
        write_oci_archive(rootfs_tar=rootfs, output=out, reference=PAUSE,
                          config=ImageConfig(entrypoint=("/pause",), env=()))


def debian_image(out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        mmdebstrap_rootfs(output_tar=rootfs, packages=("python3",),
                          log=out.with_name(out.name + ".log"))
        write_oci_archive(rootfs_tar=rootfs, output=out, reference=DEBIAN,
                          config=ImageConfig(cmd=("python3", "-m", "http.server", "8080")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, type=Path, help="the built programs")
    parser.add_argument("--out", required=True, type=Path, help="where the archives go")
    parser.add_argument("--rebuild-agent", action="store_true")
    parser.add_argument("images", nargs="+", choices=["pause", "debian", "agent"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for image in args.images:
        out = args.out / f"{image}.oci.tar"
        if out.exists() and not (image == "agent" and args.rebuild_agent):
            print(out)
            continue
        start = time.monotonic()
        print(f"images: building {image} ...", file=sys.stderr, flush=True)
        if image == "pause":
            pause_image(args.bin, out)
        elif image == "debian":
            debian_image(out)
        else:
            build_agent_image(output=out, tag=normalize_reference(DEFAULT_AGENT_IMAGE))
        print(f"images: {image} built in {time.monotonic() - start:.0f}s "
              f"({out.stat().st_size >> 20} MiB)", file=sys.stderr, flush=True)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
