"""Tests for waylay.core.engine.target: parsing and validating target strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine.errors import UsageError
from waylay.core.engine.target import TARGET_FORMS, Target, parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pod/web-0", Target(kind="pod", name="web-0")),
        (
            "pod/web-0/container/app",
            Target(kind="pod", name="web-0", container="app"),
        ),
        ("deployment/web", Target(kind="deployment", name="web")),
        ("deploy/web", Target(kind="deployment", name="web")),
        ("Deployment/web", Target(kind="deployment", name="web")),
        ("deploy/web/container/app", Target(kind="deployment", name="web", container="app")),
        ("statefulset/db", Target(kind="statefulset", name="db")),
        ("rollout/api.v2", Target(kind="rollout", name="api.v2")),
        ("netns/shop", Target(kind="netns", name="shop")),
        ("netns/cni-1a2b_3.x", Target(kind="netns", name="cni-1a2b_3.x")),
        ("pid/1234", Target(kind="pid", name="1234")),
        ("pid/007", Target(kind="pid", name="7")),
        ("  pid/1  ", Target(kind="pid", name="1")),
    ],
)
def test_parse_accepts(text: str, expected: Target) -> None:
    """Every documented form parses to its Target."""
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected KIND/NAME"),
        ("web", "expected KIND/NAME"),
        ("/web", "expected KIND/NAME"),
        ("service/web", "unknown kind 'service'"),
        ("pod/", "not a valid Kubernetes name"),
        ("pod/Web", "not a valid Kubernetes name"),
        ("pod/-web", "not a valid Kubernetes name"),
        ("pod/web-", "not a valid Kubernetes name"),
        ("pod/" + "a" * 254, "not a valid Kubernetes name"),
        ("pod/web/app", "only suffix allowed"),
        ("pod/web/container/", "container name"),
        ("pod/web/container/App", "container name"),
        ("pod/web/container/" + "a" * 64, "container name"),
        ("pod/web/container/app/x", "only suffix allowed"),
        ("pid/0", "pid must be"),
        ("pid/-1", "pid must be"),
        ("pid/+5", "pid must be"),
        ("pid/12a", "pid must be"),
        ("pid/²", "pid must be"),
        ("pid/99999999", "pid must be"),
        ("pid/", "pid must be"),
        ("pid/12/container/x", "no suffix"),
        ("netns/", "network namespace name"),
        ("netns/..", "network namespace name"),
        ("netns/.hidden", "network namespace name"),
        ("netns/-n", "network namespace name"),
        ("netns/a b", "network namespace name"),
        ("netns/a/b", "no suffix"),
        ("netns/" + "a" * 256, "network namespace name"),
    ],
)
def test_parse_rejects_with_reason_and_forms(text: str, why: str) -> None:
    """A bad target is a UsageError naming the problem and listing the accepted forms."""
    with pytest.raises(UsageError) as info:
        parse_target(text)
    message = str(info.value)
    assert why in message
    assert TARGET_FORMS in message
    assert info.value.exit_code == 2


def test_namespace_kept_for_kubernetes_targets() -> None:
    """-n's namespace is carried on a Kubernetes target."""
    assert parse_target("deploy/web", namespace="shop").namespace == "shop"


def test_namespace_ignored_for_local_targets() -> None:
    """A Kubernetes namespace means nothing to netns/pid targets and is dropped."""
    assert parse_target("pid/5", namespace="shop").namespace is None


def test_bad_namespace_rejected() -> None:
    """An invalid Kubernetes namespace is a UsageError naming it."""
    with pytest.raises(UsageError, match="Bad_NS"):
        parse_target("pod/web", namespace="Bad_NS")


@pytest.mark.parametrize(
    ("text", "canonical", "local"),
    [
        ("deploy/web", "deployment/web", False),
        ("pod/web/container/app", "pod/web/container/app", False),
        ("rollout/r", "rollout/r", False),
        ("netns/shop", "netns/shop", True),
        ("pid/0042", "pid/42", True),
    ],
)
def test_str_is_canonical_and_is_local(text: str, canonical: str, local: bool) -> None:
    """str() gives the canonical spelling; is_local separates netns/pid from Kubernetes."""
    target = parse_target(text)
    assert str(target) == canonical
    assert target.is_local is local


def test_unknown_kind_in_constructor_rejected() -> None:
    """Building a Target with an unknown kind is a programming error."""
    with pytest.raises(ValueError, match="unknown target kind"):
        Target(kind="service", name="web")


_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
_targets = st.one_of(
    st.builds(
        Target,
        kind=st.sampled_from(["pod", "deployment", "statefulset", "rollout"]),
        name=_label,
        container=st.none() | _label,
    ),
    st.builds(
        Target,
        kind=st.just("netns"),
        name=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    ),
    st.builds(Target, kind=st.just("pid"), name=st.integers(1, 4_194_304).map(str)),
)


@given(_targets)
def test_round_trip(target: Target) -> None:
    """parse_target(str(t)) == t for every valid target."""
    assert parse_target(str(target)) == target


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_usage_error(text: str) -> None:
    """Any text either parses or raises UsageError, never another exception."""
    try:
        target = parse_target(text)
    except UsageError:
        return
    assert parse_target(str(target)) == target
