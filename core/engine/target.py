"""Target strings: what `-t` and the config's `target` name, parsed and validated (sans-I/O).

A target is written ``KIND/NAME`` (docs/architecture.md §2):

- Kubernetes: ``pod/NAME``, ``deployment/NAME`` (``deploy/NAME``), ``statefulset/NAME``,
  ``rollout/NAME``, each optionally followed by ``/container/C`` as in mirrord's target
  syntax. The Kubernetes namespace is not part of the string; it comes from ``-n`` or
  ``target.namespace`` and is passed in separately.
- Local: ``netns/NAME`` (a named network namespace under /run/netns) and ``pid/N`` (the
  network namespace of process N).

Parsing only checks the text. Whether the target exists is for the driver that reaches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from waylay.core.engine.errors import UsageError

KUBERNETES_KINDS: Final = frozenset({"pod", "deployment", "statefulset", "rollout"})
LOCAL_KINDS: Final = frozenset({"netns", "pid"})
KINDS: Final = KUBERNETES_KINDS | LOCAL_KINDS

# Spellings accepted for a kind, mapped to the canonical kind.
_KIND_ALIASES: Final = {"deploy": "deployment", **{kind: kind for kind in KINDS}}

# What the error message offers when a target string is not understood.
TARGET_FORMS: Final = (
    "pod/NAME[/container/C], deployment/NAME (or deploy/NAME), statefulset/NAME, "
    "rollout/NAME, netns/NAME, pid/N"
)

# Kubernetes object names are DNS-1123 subdomains (at most 253 characters); container
# names and namespaces are DNS-1123 labels (at most 63).
_DNS1123_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS1123_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_SUBDOMAIN_MAX: Final = 253

# iproute2 accepts any file name under /run/netns; waylay accepts the sane subset, so a name
# can never look like an option (leading "-") or walk out of the directory ("/", "..").
_NETNS_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")

# The kernel's PID_MAX_LIMIT on 64-bit systems (2**22); no pid can be larger.
_PID_MAX: Final = 4_194_304


@dataclass(frozen=True, kw_only=True)
class Target:
    """A parsed target; ``str(target)`` is its canonical spelling."""

    kind: str  # "netns" | "pid" | "pod" | "deployment" | "statefulset" | "rollout"
    name: str  # namespace name, pid as text, or Kubernetes resource name
    container: str | None = None  # the "/container/C" suffix (Kubernetes kinds only)
    namespace: str | None = None  # Kubernetes namespace (from -n or config); None if local

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}")

    @property
    def is_local(self) -> bool:
        """True for targets on this machine (netns/NAME, pid/N), False for Kubernetes."""
        return self.kind in LOCAL_KINDS

    def __str__(self) -> str:
        text = f"{self.kind}/{self.name}"
        if self.container is not None:
            text += f"/container/{self.container}"
        return text


def parse_target(text: str, *, namespace: str | None = None) -> Target:
    """Parse a target string such as ``deploy/web`` or ``pid/1234``.

    ``namespace`` is the Kubernetes namespace from ``-n`` or the config; it is validated and
    kept for Kubernetes targets and ignored for local ones. Raises ``UsageError`` naming the
    accepted forms when the text is not a valid target.
    """
    original = text
    text = text.strip()
    parts = text.split("/")
    if len(parts) < 2 or not parts[0]:
        raise _bad(original, "expected KIND/NAME")
    kind = _KIND_ALIASES.get(parts[0].lower())
    if kind is None:
        raise _bad(original, f"unknown kind {parts[0]!r}")

    if kind in LOCAL_KINDS:
        if len(parts) != 2:
            raise _bad(original, f"{kind} targets take no suffix after the name")
        name = _local_name(original, kind, parts[1])
        return Target(kind=kind, name=name)

    container: str | None = None
    if len(parts) == 4 and parts[2] == "container":
        container = parts[3]
        if not _DNS1123_LABEL.fullmatch(container):
            raise _bad(
                original,
                f"container name {container!r} is not a valid Kubernetes name "
                "(lower-case letters, digits and '-', at most 63 characters)",
            )
    elif len(parts) != 2:
        raise _bad(original, "the only suffix allowed after the name is /container/C")
    name = parts[1]
    if not _is_subdomain(name):
        raise _bad(
            original,
            f"{name!r} is not a valid Kubernetes name "
            "(lower-case letters, digits, '-' and '.', at most 253 characters)",
        )
    if namespace is not None and not _DNS1123_LABEL.fullmatch(namespace):
        raise UsageError(
            f"bad Kubernetes namespace {namespace!r}: lower-case letters, digits and '-', "
            "at most 63 characters"
        )
    return Target(kind=kind, name=name, container=container, namespace=namespace)


def _local_name(original: str, kind: str, name: str) -> str:
    if kind == "pid":
        # int() would also take "+5", " 5" and "5_0"; a pid is plain digits.
        if not name.isascii() or not name.isdigit() or not 0 < int(name) <= _PID_MAX:
            raise _bad(original, f"pid must be a process id (a number from 1 to {_PID_MAX})")
        return str(int(name))
    if not _NETNS_NAME.fullmatch(name):
        raise _bad(
            original,
            "a network namespace name is letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-', at most 255 characters",
        )
    return name


def _is_subdomain(name: str) -> bool:
    return len(name) <= _SUBDOMAIN_MAX and _DNS1123_SUBDOMAIN.fullmatch(name) is not None


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"bad target {text!r}: {why}; accepted forms: {TARGET_FORMS}")
