"""Sessions on Kubernetes targets: one agent per pod, every replica, one event stream.

Theory of operation. ``attach_kubernetes`` resolves the target to pods
(``waylay.core.kube.model.pods_to_intercept``): ``pod/NAME`` is that pod; a deployment,
statefulset or rollout is **every ready pod** its selector matches (mirrord's open-source
edition picks one at random). For each pod it picks the container (mirrord's rule, saying
which when there was a choice), warns before an unfiltered steal of a port the kubelet
probes, deploys an agent (``waylay.core.kube.agent``) and opens a ``Session`` through
port-forward. Pods are set up concurrently.

``KubeAttachment`` has the shape of ``waylay.core.client.attach.AttachedSession``: ``run`` serves
every pod's session at once, ``update`` applies a new mode or filter to all of them, ``stop``
ends them. Every event carries the ``pod`` it came from. A pod whose link fails is
reported and dropped; the others go on; ``run`` raises only when every link failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from waylay.core.client.session import EventSink, PortPlan, Session, SessionStats, plan_ports
from waylay.core.engine.config import AgentConfig, IncomingConfig, Mode
from waylay.core.engine.errors import AgentError, TargetError, WaylayError
from waylay.core.engine.events import ErrorEvent, Event, WarningEvent, with_pod
from waylay.core.engine.target import Target
from waylay.core.engine.wire import Welcome
from waylay.core.kube.agent import (
    Link,
    PodAgent,
    deploy_agent,
    open_link,
    remove_agent,
    running_agents,
)
from waylay.core.kube.api import DEPLOYMENTS, PODS, ROLLOUTS, STATEFULSETS, KubeApi, Resource
from waylay.core.kube.model import (
    PodInfo,
    WorkloadInfo,
    choose_container,
    pod_from_api,
    pods_to_intercept,
    probe_ports,
    workload_from_api,
)

ProgressSink = Callable[[str], None]

_WORKLOADS: dict[str, Resource] = {"deployment": DEPLOYMENTS, "statefulset": STATEFULSETS,
                                   "rollout": ROLLOUTS}
PROBE_SAFE_FILTER = '"header_filter": "^User-Agent: (?!kube-probe)"'
# How often a workload's pods are listed again to pick up new replicas.
FOLLOW_INTERVAL_S = 3.0


@dataclass
class PodSession:
    agent: PodAgent
    link: Link
    session: Session


@dataclass
class SessionGroup:
    """The sessions of every pod, seen as one (what the CLI and the dashboard read)."""

    members: list[PodSession]
    ended_cleanly: bool = False

    @property
    def welcome(self) -> Welcome | None:
        """None until every pod's agent welcomed us; then their listening ports merged."""
        welcomes = [m.session.welcome for m in self.members]
        if not welcomes or any(w is None for w in welcomes):
            return None
        first = welcomes[0]
        assert first is not None
        ports = sorted({p for w in welcomes if w is not None for p in w.listening_ports})
        return replace(first, listening_ports=tuple(ports))

    @property
    def planned(self) -> bool:
        return bool(self.members) and all(m.session.planned for m in self.members)

    @property
    def plans(self) -> list[PortPlan]:
        """The ports subscribed (the same plan on every pod)."""
        return self.members[0].session.plans if self.members else []

    @property
    def stats(self) -> SessionStats:
        total = SessionStats()
        for member in self.members:
            for name in ("stolen", "passed", "mirrored", "errors", "warnings"):
                setattr(total, name, getattr(total, name) + getattr(member.session.stats, name))
        return total


@dataclass
class PodStarter:
    """Everything needed to put a session on one more pod (at attach, or a new replica)."""

    api: KubeApi
    target: Target
    agent: AgentConfig
    incoming: IncomingConfig
    cli_ports: dict[int, int | None]
    on_event: EventSink
    progress: ProgressSink
    local_host: str
    capture: bool

    async def start(self, pod: PodInfo) -> PodSession:
        """Container choice, agent (joined or new), session handshake."""
        choice = choose_container(pod, self.target.container)
        if choice.note:
            self.progress(choice.note)
        if self.agent.ephemeral:
            joined = await self._join(pod, choice.name)
            if joined is not None:
                return joined
        placed = await deploy_agent(self.api, pod, choice.name, self.agent, self.progress)
        try:
            link = await open_link(self.api, placed)
            session = self._session(placed, link)
            try:
                await session.handshake()
            except AgentError as exc:
                why = link.forward_error(placed.port)
                raise TargetError(f"pod/{pod.name}: {exc}" + (f" ({why})" if why else "")) \
                    from None
        except BaseException:
            await remove_agent(self.api, placed)
            raise
        return PodSession(agent=placed, link=link, session=session)

    async def _join(self, pod: PodInfo, container: str) -> PodSession | None:
        """Share an agent already running in the pod (another developer's), if any."""
        for placed in running_agents(pod, container):
            link = await open_link(self.api, placed)
            session = self._session(placed, link)
            try:
                await session.handshake()
            except AgentError:  # it is leaving: try the next, else start our own
                link.writer.close()
                continue
            self.progress(f"pod/{pod.name}: joined the agent already serving it "
                          f"({placed.agent_container})")
            return PodSession(agent=placed, link=link, session=session)
        return None

    def _session(self, placed: PodAgent, link: Link) -> Session:
        def tagged(event: Event, pod_name: str = placed.pod.name) -> None:
            self.on_event(with_pod(event, pod_name))

        return Session(reader=link.reader, writer=link.writer, token=placed.token,
                       incoming=self.incoming, cli_ports=self.cli_ports, on_event=tagged,
                       local_host=self.local_host, capture=self.capture,
                       client_name=f"waylay/{placed.pod.name}",
                       local_response_timeout=self.agent.local_response_timeout,
                       body_buffer=self.agent.body_buffer,
                       inject_headers=self.agent.inject_headers)


@dataclass
class KubeAttachment:
    """Running sessions on every pod of a Kubernetes target (see the module docstring)."""

    target: Target
    starter: PodStarter
    session: SessionGroup
    namespace: str
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _failures: list[AgentError] = field(default_factory=list)

    async def run(self) -> None:
        """Serve every pod until ``stop()``, taking in new ready replicas of a workload;
        raises AgentError when no pod is left because their links failed."""
        try:
            for member in self.session.members:
                self._serve(member)
            follower = (asyncio.create_task(self._follow(), name="kube-follow")
                        if self.target.kind != "pod" else None)
            try:
                while self._tasks and not self._stopping.is_set():
                    await asyncio.wait(set(self._tasks.values()),
                                       return_when=asyncio.FIRST_COMPLETED)
                    for name, task in list(self._tasks.items()):
                        if task.done():
                            del self._tasks[name]
            finally:
                if follower is not None:
                    follower.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks.values()))
            self.session.ended_cleanly = not self._failures
            if self._failures and not self._stopping.is_set():
                raise self._failures[0]
        finally:
            await self.close()

    def _serve(self, member: PodSession) -> None:
        name = member.agent.pod.name
        self._tasks[name] = asyncio.create_task(self._run_member(member), name=f"pod-{name}")

    async def _run_member(self, member: PodSession) -> None:
        try:
            await member.session.run()
        except AgentError as exc:
            why = member.link.forward_error(member.agent.port)
            message = f"pod/{member.agent.pod.name}: {exc}" + (f" ({why})" if why else "")
            others = len(self._tasks) > 1
            if others and not self._stopping.is_set():
                self.starter.on_event(ErrorEvent(message=f"{message}; the other pods go on",
                                                 pod=member.agent.pod.name))
            self._failures.append(AgentError(message))
            self.session.members.remove(member)

    async def _follow(self) -> None:
        """Every few seconds, start a session on ready pods of the workload not yet
        served (a scale-up, a restarted pod). Failures are reported, never fatal."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                pods = await asyncio.to_thread(resolve_pods, self.starter.api, self.target,
                                               self.namespace)
            except WaylayError:
                continue  # none ready right now, or the API blinked: the served go on
            for pod in pods:
                if pod.name in self._tasks or self._stopping.is_set():
                    continue
                self.starter.progress(f"pod/{pod.name} is ready: intercepting it too")
                _warn_probes([pod], self.starter.incoming, self.starter.cli_ports,
                             self.starter.on_event)
                try:
                    member = await self.starter.start(pod)
                except (WaylayError, OSError) as exc:
                    self.starter.on_event(WarningEvent(
                        message=f"pod/{pod.name}: not intercepted: {exc}", pod=pod.name))
                    continue
                if self._stopping.is_set():
                    member.session.stop()
                self.session.members.append(member)
                self._serve(member)

    def stop(self) -> None:
        self._stopping.set()
        for member in self.session.members:
            member.session.stop()

    async def update(self, incoming: IncomingConfig,
                     cli_ports: dict[int, int | None] | None = None) -> bool:
        """Replace mode, filter and ports on every pod in place; True if all took it.
        Pods taken in later get the new settings too."""
        if cli_ports is not None:
            self.starter.cli_ports = cli_ports
        self.starter.incoming = incoming
        _warn_probes([m.agent.pod for m in self.session.members], incoming,
                     self.starter.cli_ports, self.starter.on_event)
        results = await asyncio.gather(
            *(m.session.update(incoming, cli_ports) for m in self.session.members
              if m.session.welcome is not None))
        return all(results)

    async def close(self) -> None:
        """Stop every session and delete Job agents (ephemeral ones leave by themselves)."""
        self.stop()
        for member in self.session.members:
            with contextlib.suppress(WaylayError, OSError):
                await remove_agent(self.starter.api, member.agent)


async def attach_kubernetes(target: Target, *, incoming: IncomingConfig,
                            cli_ports: dict[int, int | None], on_event: EventSink,
                            on_progress: ProgressSink | None = None,
                            local_host: str = "127.0.0.1", capture: bool = False,
                            agent: AgentConfig, kube_context: str | None = None,
                            config_file: str | None = None) -> KubeAttachment:
    """Deploy an agent into every pod ``target`` means and connect a session to each."""
    progress = on_progress or (lambda _message: None)
    api = await asyncio.to_thread(KubeApi, context=kube_context, config_file=config_file)
    namespace = target.namespace or api.context.namespace
    progress(f"looking up {target} in namespace {namespace} (context {api.context.name})")
    pods = await asyncio.to_thread(resolve_pods, api, target, namespace)
    if len(pods) > 1:
        progress(f"{target}: intercepting all {len(pods)} ready pods: "
                 f"{', '.join(p.name for p in pods)}")
    _warn_probes(pods, incoming, cli_ports, on_event)
    starter = PodStarter(api=api, target=target, agent=agent, incoming=incoming,
                         cli_ports=dict(cli_ports), on_event=on_event, progress=progress,
                         local_host=local_host, capture=capture)
    results = await asyncio.gather(*(starter.start(pod) for pod in pods),
                                   return_exceptions=True)
    members = [r for r in results if isinstance(r, PodSession)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        if not members:
            first = failures[0]
            raise first if isinstance(first, WaylayError) else TargetError(str(first))
        for failure in failures:
            on_event(WarningEvent(message=f"{failure}; the other pods are intercepted"))
    return KubeAttachment(target=target, starter=starter, session=SessionGroup(members),
                          namespace=namespace)


def resolve_pods(api: KubeApi, target: Target, namespace: str) -> list[PodInfo]:
    """The pods ``target`` means (blocking: run in a thread)."""
    if target.kind == "pod":
        obj = api.get(PODS, namespace, target.name)
        pods = [pod_from_api(obj)] if obj is not None else []
        return pods_to_intercept("pod", target.name, pods)
    found = api.get(_WORKLOADS[target.kind], namespace, target.name)
    if found is None:
        raise TargetError(f"{target.kind}/{target.name} not found in namespace {namespace} "
                          f"(context {api.context.name})")
    workload = workload_from_api(target.kind, found)
    workload = _follow_workload_ref(api, workload)
    items, _ = api.list(PODS, namespace, label_selector=workload.selector.to_query())
    return pods_to_intercept(target.kind, target.name, [pod_from_api(i) for i in items],
                             workload)


def _follow_workload_ref(api: KubeApi, workload: WorkloadInfo) -> WorkloadInfo:
    """An Argo rollout with ``workloadRef`` selects pods with its Deployment's selector."""
    if workload.workload_ref is None or not workload.selector.empty:
        return workload
    kind, _, name = workload.workload_ref.partition("/")
    resource = _WORKLOADS.get(kind)
    referenced = api.get(resource, workload.namespace, name) if resource else None
    if referenced is None:
        raise TargetError(f"{workload.kind}/{workload.name} refers to {workload.workload_ref}, "
                          "which was not found")
    return replace(workload, selector=workload_from_api(kind, referenced).selector)


def _warn_probes(pods: list[PodInfo], incoming: IncomingConfig,
                 cli_ports: dict[int, int | None], on_event: EventSink) -> None:
    """Warn before an unfiltered steal of a port the kubelet probes: its probes would
    reach the local app (or fail with it), and the pod could be restarted or unlisted.
    Replicas share a spec: one warning names every pod it is about."""
    if incoming.mode is not Mode.STEAL:
        return
    found: dict[tuple[int, str], list[str]] = {}
    for pod in pods:
        probes = probe_ports(pod)
        known = sorted(set(probes) | {p for c in pod.containers for p in c.ports})
        for plan in plan_ports(incoming, cli_ports, known):
            if plan.http_filter is None and plan.remote in probes:
                what = " and ".join(probes[plan.remote])
                found.setdefault((plan.remote, what), []).append(pod.name)
    for (port, what), names in found.items():
        on_event(WarningEvent(message=(
            f"{', '.join(f'pod/{n}' for n in names)}: port {port} is the {what}; an "
            "unfiltered steal sends the kubelet's probes to your local app, and the pod "
            "may be restarted or taken out of its Service. Steal with a filter that leaves "
            f"them, e.g. {{{PROBE_SAFE_FILTER}}} (examples/steal-all-but-probes.json)"),
            pod=names[0] if len(names) == 1 else None))
