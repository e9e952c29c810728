"""Fixtures of the Kubernetes tests (see kube_bed.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import ROOT_REASON
from tests.kube.kube_bed import KubeBed, kube_bed


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeBed]:
    """The module's cluster: deployment web (pods web-a, web-b), statefulset cache
    (web-b), deployment idle (no pods), pod multi (a sidecar first)."""
    if ROOT_REASON is not None:
        pytest.skip(ROOT_REASON)
    with kube_bed(tmp_path_factory.mktemp("kube")) as bed:
        yield bed
