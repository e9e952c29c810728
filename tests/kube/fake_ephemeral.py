"""The ``pods/ephemeralcontainers`` subresource's PATCH rules, without I/O.

``patched_ephemeral_containers(pod, content_type, body)`` returns the pod's new
``spec.ephemeralContainers`` or raises the ``ApiError`` the real API server would:

- ``application/strategic-merge-patch+json``: ``{"spec": {"ephemeralContainers": [...]}}``
  merged by ``name`` (new names appended, same names merged field by field; nested maps
  merge, nested lists are replaced, a simplification of strategic merge). ``$patch:
  delete`` on an entry is a removal; ``$setElementOrder`` directives are ignored.
- ``application/merge-patch+json``: the list is replaced as a whole (RFC 7386).
- ``application/json-patch+json``: only ``add`` to ``/spec/ephemeralContainers``,
  ``/spec/ephemeralContainers/-`` or ``/spec/ephemeralContainers/N`` (RFC 6902 §4.1);
  other operations are not modeled (400).
- anything else: 415, as the real API answers for unknown media types.

Everything outside ``spec.ephemeralContainers`` in a patch is ignored, as the real
subresource does. The result is validated like the API server: existing ephemeral
containers may be neither changed nor removed; new ones need a unique name and an image
and may not declare ports. New entries get the API's defaults (termination message path
and policy, image pull policy).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kube.fake_store import JSON, ApiError, bad_request, invalid

FIELD = "spec.ephemeralContainers"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json")


def _with_defaults(container: JSON) -> JSON:
    container = {k: v for k, v in container.items() if not k.startswith("$")}
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = str(container.get("image", ""))
    last = image.split("@")[0].rsplit("/", 1)[-1]
    latest = "@" not in image and (":" not in last or last.endswith(":latest"))
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    return container


def _deep_merge(base: JSON, patch: JSON) -> JSON:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _list_from(body: Any) -> Any:
    spec = body.get("spec") if isinstance(body, dict) else None
    return spec.get("ephemeralContainers") if isinstance(spec, dict) else None


def _strategic(current: list[JSON], body: Any) -> list[JSON]:
    entries = _list_from(body)
    if entries is None:
        return current
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise bad_request(f"{FIELD} must be a list of objects")
    result = copy.deepcopy(current)
    for entry in entries:
        at = next((i for i, c in enumerate(result) if c.get("name") == entry.get("name")),
                  None)
        if entry.get("$patch") == "delete":
            if at is not None:
                del result[at]
        elif at is None:
            result.append(copy.deepcopy(entry))
        else:
            result[at] = _deep_merge(result[at], entry)
    return result


def _json_patch(current: list[JSON], body: Any) -> list[JSON]:
    if not isinstance(body, list):
        raise bad_request("a JSON patch must be a list of operations")
    result = copy.deepcopy(current)
    for op in body:
        path = op.get("path") if isinstance(op, dict) else None
        if not isinstance(op, dict) or op.get("op") != "add" or not isinstance(path, str) \
                or not (path == "/spec/ephemeralContainers"
                        or path.startswith("/spec/ephemeralContainers/")):
            raise bad_request(f"the fake API server models only \"add\" operations on "
                              f"/spec/ephemeralContainers in JSON patches, got {op!r}")
        value = op.get("value")
        if path == "/spec/ephemeralContainers":
            if not isinstance(value, list):
                raise bad_request(f"{FIELD} must be a list")
            result = copy.deepcopy(value)
            continue
        index = path.rsplit("/", 1)[1]
        if not isinstance(value, dict):
            raise bad_request(f"{path}: value must be an object")
        if index == "-":
            result.append(copy.deepcopy(value))
        elif index.isdigit() and int(index) <= len(result):
            result.insert(int(index), copy.deepcopy(value))
        else:
            raise ApiError(422, "Invalid", f"add operation does not apply: doc is missing "
                           f"path: \"{path}\": missing value")
    return result


def patched_ephemeral_containers(pod: JSON, content_type: str, body: Any) -> list[JSON]:
    """The pod's ephemeral containers after applying the patch ``body``; ApiError if refused."""
    spec = pod.get("spec", {})
    current: list[JSON] = spec.get("ephemeralContainers") or []
    media = content_type.split(";")[0].strip().lower()
    if media == "application/strategic-merge-patch+json":
        proposed = _strategic(current, body)
    elif media == "application/merge-patch+json":
        entries = _list_from(body)
        proposed = current if entries is None else entries
        if not isinstance(proposed, list) or not all(isinstance(e, dict) for e in proposed):
            raise bad_request(f"{FIELD} must be a list of objects")
    elif media == "application/json-patch+json":
        proposed = _json_patch(current, body)
    else:
        raise ApiError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media "
                       f"types include: {', '.join(PATCH_TYPES)} (apply patches are not "
                       f"modeled by the fake API server)")
    proposed = [_with_defaults(c) for c in proposed]
    _validate(pod, current, proposed)
    return proposed


def _validate(pod: JSON, current: list[JSON], proposed: list[JSON]) -> None:
    name = pod["metadata"]["name"]
    causes: list[tuple[str, str]] = []
    by_name = {c.get("name"): c for c in proposed}
    for old in current:
        new = by_name.get(old["name"])
        if new is None:
            causes.append((FIELD, f'Forbidden: existing ephemeral containers "{old["name"]}" '
                                  f"may not be removed"))
        elif new != old:
            causes.append((FIELD, f'Forbidden: existing ephemeral containers "{old["name"]}" '
                                  f"may not be changed"))
    taken = {c.get("name") for c in pod.get("spec", {}).get("containers", [])}
    taken |= {c.get("name") for c in pod.get("spec", {}).get("initContainers", []) or []}
    old_names = {c["name"] for c in current}
    for i, container in enumerate(proposed):
        where = f"{FIELD}[{i}]"
        cname = container.get("name")
        if cname in old_names:
            old_names.discard(cname)  # a second entry of that name is a duplicate below
            taken.add(cname)
            continue
        if not cname:
            causes.append((f"{where}.name", "Required value"))
        elif cname in taken:
            causes.append((f"{where}.name", f'Duplicate value: "{cname}"'))
        taken.add(cname)
        if not container.get("image"):
            causes.append((f"{where}.image", "Required value"))
        if container.get("ports"):
            causes.append((f"{where}.ports", "Forbidden: cannot be set for an Ephemeral "
                                             "Container"))
    if causes:
        raise invalid("Pod", name, causes)
