"""`waylay agent-image build`: the agent's OCI image from Debian packages and this checkout,
without Docker or a registry.

What ``agent/Dockerfile`` makes, made another way: a Debian root filesystem (``mmdebstrap``,
variant minbase) with python3 (3.11 on bookworm), pip, iptables, iproute2 and util-linux,
this checkout installed into it by pip, and ``waylay`` as its entry point. The result is an
OCI image archive (the OCI image layout, tarred), which ``ctr images import``, ``skopeo
copy oci-archive:FILE docker://REGISTRY/NAME`` and ``podman load`` take as it is.

The archive is written by hand (one gzip layer, its config, manifest and index, each named
by its sha256): the format is small, and no tool beyond mmdebstrap is needed for it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waylay.core.engine.config import DEFAULT_AGENT_IMAGE
from waylay.core.engine.errors import PrivilegeError, UsageError, WaylayError

SUITE = "bookworm"  # Debian 12: python3 is 3.11, waylay's Python
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# As agent/Dockerfile: iptables (nft backend) for the redirect rules, iproute2 for `ss -K`,
# util-linux for nsenter (the Job form); python3-pip to install the checkout.
AGENT_PACKAGES = ("python3", "python3-pip", "iptables", "iproute2", "util-linux",
                  "ca-certificates")
# What the checkout's pip install needs; the same list as agent/Dockerfile's COPY lines.
SOURCE_ENTRIES = ("pyproject.toml", "README.md", "core", "agent", "cli", "tui")
# Documentation and translations are most of a minbase's size and no use to the agent;
# the copyright files stay.
DPKG_SLIM = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
)
# The image is built for this machine's architecture (mmdebstrap's default): its Debian
# name (OCI's too) and its name in wheel tags.
ARCHITECTURES = {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}
# pip does not widen a --platform to the older glibc versions it covers: every manylinux tag
# the image's glibc (2.36, bookworm) runs, spelled out.
_MANYLINUX = ("1", "2010", "2014", "_2_17", "_2_24", "_2_28", "_2_31", "_2_34", "_2_36")
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
_CHUNK = 1 << 20  # hashing and copying buffer: 1 MiB


class ImageBuildError(WaylayError):
    """A step of the image build failed; the message names the step and its output's tail."""


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The parts of an OCI image config a runtime uses."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    working_dir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)


def normalize_reference(name: str) -> str:
    """``waylay-agent:0.1`` -> ``docker.io/library/waylay-agent:0.1``, as the kubelet and
    containerd name images: an image must be imported under this full name for a pod that
    says ``image: waylay-agent:0.1`` to find it."""
    if not name or any(c.isspace() for c in name) or name != name.strip("/:@"):
        raise UsageError(f"{name!r} is not an image name (like waylay-agent:0.1)")
    first, slash, _ = name.partition("/")
    if not slash:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    last = name.rsplit("/", 1)[1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def _tag_of(reference: str) -> str:
    """The OCI layout's ``ref.name``: the tag alone, as containerd's own export writes it."""
    last = reference.rsplit("/", 1)[1]
    return last.split("@", 1)[0].partition(":")[2] or "latest"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _gzip_layer(rootfs_tar: Path, out: Path) -> tuple[str, str, int]:
    """Compress a layer; returns (diff_id hex, digest hex, compressed size)."""
    diff = hashlib.sha256()
    # mtime=0 and no file name in the gzip header: the same tar gives the same blob.
    with rootfs_tar.open("rb") as src, out.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
        while chunk := src.read(_CHUNK):
            diff.update(chunk)
            gz.write(chunk)
    return diff.hexdigest(), _sha256_file(out), out.stat().st_size


def machine_architecture() -> tuple[str, str]:
    """(Debian/OCI name, wheel tag name) of this machine's architecture."""
    machine = platform.machine()
    if machine not in ARCHITECTURES:
        raise UsageError(f"cannot build the image on a {machine} machine "
                         f"(only {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[machine]


def write_oci_archive(*, rootfs_tar: Path, output: Path, reference: str, config: ImageConfig,
                      created: datetime.datetime | None = None,
                      architecture: str | None = None) -> str:
    """Write an OCI image archive of one layer (the root filesystem ``rootfs_tar``) named
    ``reference`` (already normalized); returns the manifest's digest (``sha256:...``)."""
    created = created or datetime.datetime.now(datetime.UTC)
    architecture = architecture or machine_architecture()[0]
    with tempfile.TemporaryDirectory(prefix="waylay-oci-", dir=output.parent) as tmp:
        layer = Path(tmp) / "layer"
        diff_id, layer_digest, layer_size = _gzip_layer(rootfs_tar, layer)
        image_config: dict[str, Any] = {
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "architecture": architecture,
            "os": "linux",
            "config": {
                "Env": list(config.env),
                "Entrypoint": list(config.entrypoint) or None,
                "Cmd": list(config.cmd) or None,
                "WorkingDir": config.working_dir,
                "Labels": config.labels or None,
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "created_by": "waylay agent-image (mmdebstrap)"}],
        }
        image_config["config"] = {k: v for k, v in image_config["config"].items() if v}
        config_blob = _json_blob(image_config)
        manifest_blob = _json_blob({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _digest(config_blob), "size": len(config_blob)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE,
                        "digest": f"sha256:{layer_digest}", "size": layer_size}],
        })
        index_blob = _json_blob({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest_blob), "size": len(manifest_blob),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {
                    # containerd's importer takes the full name from here ...
                    "io.containerd.image.name": reference,
                    # ... skopeo and podman take the tag from here.
                    "org.opencontainers.image.ref.name": _tag_of(reference),
                },
            }],
        })
        partial = Path(tmp) / "archive.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            _add_bytes(archive, "oci-layout", _json_blob({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(archive, "index.json", index_blob)
            for blob in (config_blob, manifest_blob):
                _add_bytes(archive, f"blobs/sha256/{_digest(blob)[7:]}", blob)
            info = archive.gettarinfo(str(layer), arcname=f"blobs/sha256/{layer_digest}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with layer.open("rb") as f:
                archive.addfile(info, f)
        os.replace(partial, output)
    return _digest(manifest_blob)


def _json_blob(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def mmdebstrap_rootfs(*, output_tar: Path, packages: Sequence[str], hooks: Sequence[str] = (),
                      log: Path, mirrors: Sequence[str] = (), suite: str = SUITE) -> None:
    """A Debian minbase root filesystem with ``packages``, as a tar (mmdebstrap)."""
    if shutil.which("mmdebstrap") is None:
        raise PrivilegeError("mmdebstrap not found: apt-get install mmdebstrap "
                             "(it builds the image's Debian root filesystem)")
    mirrors = mirrors or (f"deb {MIRROR} {suite} main", f"deb {MIRROR} {suite}-updates main",
                          f"deb {SECURITY_MIRROR} {suite}-security main")
    command = [
        "mmdebstrap", "--variant=minbase", "--include=" + ",".join(packages),
        *(f"--dpkgopt={option}" for option in DPKG_SLIM),
        *(f"--customize-hook={hook}" for hook in hooks),
        # The runtime mounts its own over these; the builder's must not stay in the image.
        '--customize-hook=: > "$1/etc/resolv.conf"; : > "$1/etc/hostname"',
        suite, str(output_tar), *mirrors,
    ]
    _run_step("mmdebstrap", command, log)


def _run_step(name: str, command: Sequence[str], log: Path) -> None:
    """Run one build step, its output appended to ``log``; a failure's error carries the tail."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
        except OSError as exc:
            raise ImageBuildError(f"{name}: cannot run {command[0]}: {exc}") from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise ImageBuildError(f"{name} failed with exit code {done.returncode} "
                              f"(log: {log}); its last lines:\n" + "\n".join(tail))


def find_checkout(source: str | None) -> Path:
    """The waylay source tree to install: ``--source``, else the one this module is from."""
    root = Path(source) if source else Path(__file__).resolve().parent.parent
    missing = [entry for entry in SOURCE_ENTRIES if not (root / entry).exists()]
    if missing:
        hint = "" if source else " (this waylay is not installed from a checkout; pass --source)"
        raise UsageError(f"{root} is not a waylay checkout: no {', '.join(missing)}{hint}")
    return root


@contextlib.contextmanager
def _progress(what: str) -> Iterator[None]:
    start = time.monotonic()
    print(f"agent-image: {what} ...", file=sys.stderr, flush=True)
    yield
    print(f"agent-image:   done in {time.monotonic() - start:.0f}s",
          file=sys.stderr, flush=True)


def wheelhouse(*, checkout: Path, dest: Path, log: Path) -> Path:
    """Wheels of waylay (from ``checkout``) and of every dependency, for the image's Python
    (CPython 3.11, glibc 2.36, this machine's architecture); returns waylay's wheel.

    They are fetched here, by this machine's pip with its own index, proxy and certificate
    settings; the image's pip then installs them without a network."""
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True, check=False).returncode:
        raise PrivilegeError(f"{sys.executable} has no pip; the image's Python packages are "
                             "fetched with it (python3 -m ensurepip, or apt-get install "
                             "python3-pip)")
    with tempfile.TemporaryDirectory(prefix="waylay-src-", dir=dest.parent) as tmp:
        src = Path(tmp)
        for entry in SOURCE_ENTRIES:  # as agent/Dockerfile's COPY lines; no caches, no venv
            path = checkout / entry
            if path.is_dir():
                shutil.copytree(path, src / entry,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / entry)
        _run_step("building waylay's wheel",
                  [*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), str(src)], log)
    wheels = sorted(dest.glob("waylay-*.whl"))
    if len(wheels) != 1:
        raise ImageBuildError(f"building waylay's wheel left {len(wheels)} wheels in {dest}")
    _run_step("downloading the dependencies' wheels", [
        *pip, "download", "--dest", str(dest), "--only-binary=:all:",
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        *(f"--platform=manylinux{tag}_{machine_architecture()[1]}" for tag in _MANYLINUX),
        str(wheels[0]),
    ], log)
    return wheels[0]


def build_agent_image(*, output: Path, tag: str, source: str | None = None,
                      mirrors: Sequence[str] = ()) -> str:
    """Build the agent image into ``output``; returns the manifest digest."""
    reference = normalize_reference(tag)
    checkout = find_checkout(source)
    output = output.resolve()
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} is not a directory (--output)")
    log = output.with_name(output.name + ".log")
    log.write_bytes(b"")
    with tempfile.TemporaryDirectory(prefix="waylay-agent-image-", dir=output.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        with _progress(f"wheels of waylay ({checkout}) and its dependencies (pip; log: {log})"):
            waylay_wheel = wheelhouse(checkout=checkout, dest=wheels, log=log)
        rootfs = Path(tmp) / "rootfs.tar"
        with _progress(f"Debian {SUITE} root filesystem with {', '.join(AGENT_PACKAGES)} and "
                       f"those wheels (mmdebstrap)"):
            mmdebstrap_rootfs(
                output_tar=rootfs, packages=AGENT_PACKAGES, mirrors=mirrors, log=log,
                hooks=(
                    f"copy-in {wheels} /",
                    # No network and none of this machine's PIP_* settings: only the wheels.
                    # Debian marks its Python externally managed; the image is ours alone.
                    'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -m pip '
                    "install --no-index --find-links /wheels --no-cache-dir "
                    "--break-system-packages --root-user-action=ignore "
                    f"/wheels/{waylay_wheel.name}",
                    'rm -rf "$1/wheels"',
                ))
        with _progress(f"OCI archive {output} ({reference})"):
            digest = write_oci_archive(
                rootfs_tar=rootfs, output=output, reference=reference,
                config=ImageConfig(entrypoint=("waylay",), cmd=("agent", "--help"),
                                   labels={"org.opencontainers.image.title": "waylay-agent"}))
    size = output.stat().st_size / (1 << 20)
    print(f"agent-image: wrote {output} ({size:.0f} MiB), {reference} {digest}\n"
          f"  load it: ctr -n k8s.io images import {output}   (containerd, on the node)\n"
          f"       or: skopeo copy oci-archive:{output} docker://REGISTRY/waylay-agent:TAG\n"
          f"  then set agent.image to the name the cluster pulls "
          f"(default {DEFAULT_AGENT_IMAGE})", file=sys.stderr)
    return digest


def add_parser(commands: Any) -> None:
    """``waylay agent-image build``, added to the CLI's subcommands."""
    image = commands.add_parser(
        "agent-image", help="build the agent's container image without Docker",
        description="Build the image waylay deploys into pods (agent.image) as an OCI "
        "archive, from Debian packages (mmdebstrap) and this checkout, as agent/Dockerfile "
        "does with Docker. Needs root or unprivileged user namespaces (mmdebstrap), and "
        "reaches Debian's mirror and PyPI.")
    actions = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="build the OCI archive",
        description="Build the agent image as an OCI archive. Load it into a node's "
        "containerd with `ctr -n k8s.io images import FILE`, or push it with `skopeo copy "
        "oci-archive:FILE docker://REGISTRY/NAME:TAG`.")
    build.add_argument("-o", "--output", default="waylay-agent.oci.tar", metavar="FILE",
                       help="where to write the archive (default %(default)s)")
    build.add_argument("--tag", default=DEFAULT_AGENT_IMAGE, metavar="NAME",
                       help="the image's name in the archive (default %(default)s: what "
                       "agent.image defaults to)")
    build.add_argument("--source", metavar="DIR",
                       help="the waylay checkout to install (default: the one this waylay "
                       "runs from)")
    build.add_argument("--mirror", action="append", default=[], metavar="LINE",
                       help="an apt sources line for mmdebstrap, e.g. 'deb "
                       f"{MIRROR} {SUITE} main' (repeatable; default: deb.debian.org with "
                       "updates and security)")


def agent_image_command(args: argparse.Namespace) -> int:
    build_agent_image(output=Path(args.output), tag=args.tag, source=args.source,
                      mirrors=args.mirror)
    return 0
