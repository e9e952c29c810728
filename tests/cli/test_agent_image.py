"""`waylay agent-image build`'s pieces that need no network: names and the OCI archive."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from waylay.cli.agent_image import (
    ImageConfig,
    find_checkout,
    machine_architecture,
    normalize_reference,
    write_oci_archive,
)
from waylay.core.engine.errors import UsageError


@pytest.mark.parametrize(("name", "full"), [
    ("waylay-agent:0.1", "docker.io/library/waylay-agent:0.1"),
    ("waylay-agent", "docker.io/library/waylay-agent:latest"),
    ("me/waylay-agent:2", "docker.io/me/waylay-agent:2"),
    ("registry.example.com/team/agent:1", "registry.example.com/team/agent:1"),
    ("localhost:5000/agent", "localhost:5000/agent:latest"),
    ("localhost/waylay/pause:1", "localhost/waylay/pause:1"),
])
def test_names_are_normalized_as_the_kubelet_does(name: str, full: str) -> None:
    """A short image name becomes the full name containerd stores it under."""
    assert normalize_reference(name) == full


@pytest.mark.parametrize("name", ["", "a b", "/agent", "agent:"])
def test_a_bad_name_is_a_usage_error(name: str) -> None:
    """A name that is not an image reference is refused before any build."""
    with pytest.raises(UsageError):
        normalize_reference(name)


def _rootfs(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.tar"
    with tarfile.open(path, "w") as tar:
        data = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("usr/bin/hello")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
    return path


def test_the_archive_is_an_oci_layout_whose_blobs_match_their_digests(tmp_path: Path) -> None:
    """index -> manifest -> config and layer, each blob named by its sha256, the layer's
    diff_id the sha256 of the uncompressed tar, and the name where containerd reads it."""
    rootfs = _rootfs(tmp_path)
    out = tmp_path / "image.oci.tar"
    digest = write_oci_archive(rootfs_tar=rootfs, output=out,
                               reference="docker.io/library/waylay-agent:0.1",
                               config=ImageConfig(entrypoint=("waylay",), cmd=("agent",)))
    with tarfile.open(out) as archive:
        files = {m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
                 for m in archive.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, blob in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(blob).hexdigest() == name.rsplit("/", 1)[1]
    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"] == {"io.containerd.image.name":
                                    "docker.io/library/waylay-agent:0.1",
                                    "org.opencontainers.image.ref.name": "0.1"}
    manifest = json.loads(files[f"blobs/sha256/{digest[7:]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    (layer,) = manifest["layers"]
    compressed = files[f"blobs/sha256/{layer['digest'][7:]}"]
    assert layer["size"] == len(compressed)
    assert gzip.decompress(compressed) == rootfs.read_bytes()
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(rootfs.read_bytes()).hexdigest()]
    assert config["config"]["Entrypoint"] == ["waylay"]
    assert config["config"]["Cmd"] == ["agent"]
    assert (config["os"], config["architecture"]) == ("linux", machine_architecture()[0])


def test_the_same_rootfs_and_date_give_the_same_archive(tmp_path: Path) -> None:
    """No build time or file name hides in the gzip layer or the tar headers: the archive
    depends on the root filesystem, the config and the creation date only."""
    rootfs = _rootfs(tmp_path)
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for name in ("a.tar", "b.tar"):
        write_oci_archive(rootfs_tar=rootfs, output=tmp_path / name, created=created,
                          reference="localhost/x:1", config=ImageConfig())
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    """--source must hold what agent/Dockerfile copies; the error names what is missing."""
    with pytest.raises(UsageError, match=r"pyproject\.toml"):
        find_checkout(str(tmp_path))


def test_this_checkout_is_found() -> None:
    """Without --source, the checkout this waylay runs from is used."""
    assert (find_checkout(None) / "agent" / "Dockerfile").exists()
