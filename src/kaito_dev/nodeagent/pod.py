"""One pod on the node: its volumes, address, init containers, containers and status.

A `PodWorker` is started by the agent for each pod bound to a managed node and lives
until the pod goes. Its `run` does what kubelet's pod worker does, event-driven:

1. allocate the pod IP and report it; realise the volumes (retried while a ConfigMap or
   Secret is missing; an unsupported volume type is reported and the pod stays Pending);
2. translate each runnable container's argv (`command.translate`), build the stand-in
   model if needed (baked weights; a weights fetch when the agent has no hub), point a
   weights fetch's ``HF_ENDPOINT`` at the agent's hub, and patch the
   ``kaito.sh/node-agent-*`` annotations;
3. run the init containers in order, each to completion, then every container at once;
   a container the agent cannot run waits in ``ErrImagePull``/``ImagePullBackOff``;
4. supervise: a process exit is awaited, never polled; restarts follow the pod's
   ``restartPolicy`` with kubelet's backoff (``CrashLoopBackOff``); readiness comes from
   the ``readinessProbe`` (`probe`), else from running;
5. every state change marks the status dirty; one writer coalesces them into
   ``pods/status`` merge patches.

`stop` SIGTERMs the processes (SIGKILL after the grace period) before cancelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from kaito.runtime.backoff import Backoff
from kaito.runtime.client import Client
from kaito.runtime.errors import ApiError, NotFound
from kaito.runtime.events import EventRecorder
from kaito.runtime.meta import Obj
from kaito.runtime.resource import CONFIGMAPS, PODS, SECRETS
from kaito_dev.nodeagent import command
from kaito_dev.nodeagent.env import base_env, container_env
from kaito_dev.nodeagent.model import ANNOTATION_TEXT, StandInModel
from kaito_dev.nodeagent.network import IPPool
from kaito_dev.nodeagent.probe import probe_readiness
from kaito_dev.nodeagent.process import STATE_ENV, ContainerProcess
from kaito_dev.nodeagent.status import ContainerState, PodState, pod_status
from kaito_dev.nodeagent.volumes import (
    MountMap,
    UnsupportedVolume,
    VolumeNotReady,
    container_mounts,
    link_nested_mounts,
    pod_dir_name,
    realise_volumes,
)

log = structlog.get_logger("kaito_dev.nodeagent")


MODEL_ANNOTATION = "kaito.sh/node-agent-model"
ADAPTATIONS_ANNOTATION = "kaito.sh/node-agent-adaptations"
MAX_BACKOFF = 300.0
"""kubelet's cap on the crash-loop backoff (seconds)."""
BACKOFF_RESET = 600.0
"""A container that ran this long (seconds) restarts without backoff, as in kubelet."""


@dataclass
class AgentContext:
    """What every pod worker shares with the agent."""

    client: Client
    recorder: EventRecorder
    python: str
    pythonpath: str
    state_dir: Path
    restart_backoff: float
    max_grace: float
    model: StandInModel
    ips: IPPool
    hf_endpoint: str | None = None
    """The hub weights fetches download from (``HF_ENDPOINT``); None: the stand-in copy."""

    def node_disk(self, node: str) -> Path:
        """The emulated node's own disk (its hostPaths under ``/var/lib/kaito``)."""
        return self.state_dir / "node-disk" / node


class PodWorker:
    def __init__(self, ctx: AgentContext, pod: Obj) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.uid: str = meta.get("uid", "")
        self.dir = ctx.state_dir / "pods" / pod_dir_name(pod)
        spec = pod.get("spec", {})
        self.init_specs: list[Obj] = list(spec.get("initContainers") or ())
        self.specs: list[Obj] = list(spec.get("containers") or ())
        self.state = PodState(
            init=[ContainerState(c["name"], c.get("image", "")) for c in self.init_specs],
            main=[ContainerState(c["name"], c.get("image", "")) for c in self.specs],
            restart_policy=spec.get("restartPolicy") or "Always",
        )
        if self.init_specs:
            for st in (*self.state.init, *self.state.main):
                st.waiting_reason = "PodInitializing"
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.done = False
        self._dirty = asyncio.Event()
        self._procs: dict[str, ContainerProcess] = {}
        self._log = log.bind(pod=f"{self.namespace}/{self.name}")

    # -- the agent's side ----------------------------------------------------------------

    def update(self, pod: Obj) -> None:
        self.pod = pod

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.proc.returncode is None]

    async def stop(self, grace: float) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``grace`` s), then the worker."""
        self.stopping = True
        procs = list(self._procs.values())
        if procs:
            self._log.info("stopping containers", pids=[p.pid for p in procs], grace=grace)
        await asyncio.gather(*(p.stop(grace) for p in procs), return_exceptions=True)
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def kill_now(self) -> None:
        for p in self._procs.values():
            p.kill_now()

    # -- the worker ----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._status_writer(), name=f"status {self.name}")
                await self._main(tg)
                self.done = True
                self._dirty.set()
                await self._flush()
                writer.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # A bug or a broken set-up (e.g. the stand-in model cannot be built): say so on
            # the pod, as kubelet does with CreateContainerError, instead of going silent.
            self._log.exception("pod worker failed")
            cause: BaseException = e
            while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
                cause = cause.exceptions[0]
            message = f"node agent: {type(cause).__name__}: {cause}"
            for st in (*self.state.init, *self.state.main):
                if not st.is_running and st.terminated is None:
                    st.wait("CreateContainerError", message[:1000])
            self.event("Warning", "Failed", message[:1000])
            self._dirty.set()
            with contextlib.suppress(Exception):
                await self._flush()
        finally:
            self.kill_now()

    def changed(self) -> None:
        self._dirty.set()

    def event(self, type_: str, reason: str, message: str) -> None:
        self.ctx.recorder.event(self.pod, type_, reason, message)  # type: ignore[arg-type]

    async def _main(self, tg: asyncio.TaskGroup) -> None:
        ports = [
            int(p["containerPort"])
            for c in self.specs
            for p in c.get("ports") or ()
            if "containerPort" in p
        ] or [5000]
        self.state.pod_ip = self.ctx.ips.allocate(self.uid, ports)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.changed()
        volumes = await self._volumes()
        if volumes is None:
            await asyncio.Future()  # unsupported volume: stays Pending until deleted
            return

        # Plans: the local argv and env of each runnable container.
        hub = self.ctx.hf_endpoint
        needs_model = any(
            command.BAKED_WEIGHTS in arg or (command.is_fetch(c) and hub is None)
            for c in (*self.init_specs, *self.specs)
            if command.is_runnable(c)
            for arg in command.container_argv(c)
        )
        model_dir = str(await self.ctx.model.ensure()) if needs_model else None
        plans: dict[str, tuple[list[str], dict[str, str], Path]] = {}
        adaptations: list[str] = []
        used_model = False
        base = {**base_env(self.ctx.pythonpath), STATE_ENV: str(self.ctx.state_dir)}
        for c in (*self.init_specs, *self.specs):
            if not command.is_runnable(c):
                continue
            mounts = container_mounts(c, volumes)
            link_nested_mounts(mounts)
            tr = command.translate(
                c,
                python=self.ctx.python,
                mounts=mounts,
                pod_ip=self.state.pod_ip,
                stand_in_model=(lambda: model_dir or "") if model_dir else None,
                hf_endpoint=hub,
            )
            used_model |= tr.uses_stand_in_model
            adaptations += [f"{c['name']}: {a}" for a in tr.adaptations]
            env = await container_env(
                self.pod,
                c,
                base=base,
                pod_ip=self.state.pod_ip,
                fetch=self._fetch,
                translate_path=mounts.translate,
            )
            if hub is not None and command.is_fetch(c):
                env["HF_ENDPOINT"] = hub  # the node's way out: the stack's hub emulator
            plans[c["name"]] = (tr.argv, env, self._workdir(c, mounts))
            self._log.info(
                "container plan",
                container=c["name"],
                argv=tr.argv,
                mounts={m.container_path: m.local_path for m in mounts.mounts},
            )
        await self._annotate(used_model, adaptations)

        # Init containers, in order, each to completion.
        for spec, st in zip(self.init_specs, self.state.init, strict=True):
            if spec["name"] not in plans:
                await self._unpullable(spec, st)
                return
            if not await self._supervise(spec, st, plans[spec["name"]], init=True):
                self.state.failed_init = True
                self.changed()
                return
        self.state.initialized = True
        for st in self.state.main:
            st.wait("ContainerCreating")
        self.changed()

        runners = []
        for spec, st in zip(self.specs, self.state.main, strict=True):
            if spec["name"] in plans:
                runners.append(
                    tg.create_task(self._supervise(spec, st, plans[spec["name"]], init=False))
                )
            else:
                tg.create_task(self._unpullable(spec, st))
        if runners and len(runners) == len(self.specs):
            await asyncio.gather(*runners)  # returns only when no container restarts
        else:
            await asyncio.Future()

    # -- set-up --------------------------------------------------------------------------

    async def _fetch(self, kind: str, name: str) -> Obj | None:
        res = CONFIGMAPS if kind == "ConfigMap" else SECRETS
        try:
            return await self.ctx.client.get(res, name, self.namespace)
        except NotFound:
            return None

    async def _volumes(self) -> dict[str, str] | None:
        backoff = Backoff(initial=1.0, cap=30.0, jitter=0.0, reset_after=math.inf)
        while True:
            try:
                volumes = await realise_volumes(
                    self.pod,
                    self.dir,
                    self._fetch,
                    node_disk=self.ctx.node_disk(self.pod["spec"]["nodeName"]),
                )
            except UnsupportedVolume as e:
                self._log.warning("unsupported volume", error=str(e))
                self.event("Warning", "FailedMount", str(e))
                self._set_condition("VolumesReady", False, "UnsupportedVolume", str(e))
                return None
            except VolumeNotReady as e:
                delay = backoff.next()
                self._log.info("volume not ready, retrying", error=str(e), delay=delay)
                self.event("Warning", "FailedMount", f"MountVolume.SetUp failed: {e}")
                await asyncio.sleep(delay)
                continue
            return volumes

    def _set_condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.state.conditions.set_bool(type_, ok, reason, message)
        self.changed()

    def _workdir(self, spec: Obj, mounts: MountMap) -> Path:
        wd = spec.get("workingDir")
        if wd and mounts.covers(wd):
            return Path(mounts.translate(wd))
        return self.dir

    async def _annotate(self, used_model: bool, adaptations: list[str]) -> None:
        annotations: dict[str, str | None] = {
            ADAPTATIONS_ANNOTATION: json.dumps(adaptations),
            MODEL_ANNOTATION: ANNOTATION_TEXT if used_model else None,
        }
        if used_model:
            self._log.info("serving a stand-in model", model=ANNOTATION_TEXT)
        if adaptations:
            self._log.info("adapted for CPU", adaptations=adaptations)
        with contextlib.suppress(NotFound):
            await self.ctx.client.patch(
                PODS, self.name, {"metadata": {"annotations": annotations}}, self.namespace
            )

    # -- containers ----------------------------------------------------------------------

    async def _unpullable(self, spec: Obj, st: ContainerState) -> None:
        message = command.unavailable_image_message(spec)
        self._log.warning("image not available", container=spec["name"], image=spec.get("image"))
        st.wait("ErrImagePull", message)
        self.event("Warning", "Failed", f"Failed to pull image {spec.get('image')}: {message}")
        self.changed()
        await asyncio.sleep(min(2.0, self.ctx.restart_backoff))
        st.wait("ImagePullBackOff", message)
        self.event("Normal", "BackOff", f"Back-off pulling image {spec.get('image')}")
        self.changed()
        await asyncio.Future()

    async def _supervise(
        self,
        spec: Obj,
        st: ContainerState,
        plan: tuple[list[str], dict[str, str], Path],
        *,
        init: bool,
    ) -> bool:
        """Run one container under the restart policy; True when it finished with 0."""
        argv, env, cwd = plan
        name = spec["name"]
        log_path = self.dir / "logs" / f"{name}.log"
        policy = self.state.restart_policy
        # kubelet's crash-loop backoff: the first crash restarts at once, then the waits
        # run restart_backoff, doubling to MAX_BACKOFF; a long run starts afresh.
        backoff = Backoff(
            initial=self.ctx.restart_backoff, cap=MAX_BACKOFF, jitter=0.0, reset_after=math.inf
        )
        restart_at_once = True
        while True:
            try:
                proc = await ContainerProcess.start(argv, env=env, cwd=cwd, log_path=log_path)
            except OSError as e:  # e.g. the interpreter is missing: kubelet's RunContainerError
                self._log.error("container could not start", container=name, error=str(e))
                st.wait("RunContainerError", f"starting {argv[0]} failed: {e}")
                self.event("Warning", "Failed", f"Error: {e}")
                self.changed()
                restart_at_once = False
                await asyncio.sleep(backoff.next())
                continue
            self._procs[name] = proc
            started = time.monotonic()
            st.run()
            self._log.info("container started", container=name, pid=proc.pid, log=str(log_path))
            self.event("Normal", "Started", f"Started container {name} as local process {proc.pid}")
            # Init containers have no readiness: they only have to finish.
            probe: asyncio.Task[None] | None = None
            if not init and spec.get("readinessProbe"):
                probe = asyncio.create_task(
                    probe_readiness(
                        spec,
                        st,
                        ip=self.state.pod_ip or "127.0.0.1",
                        changed=self.changed,
                        log=self._log,
                    )
                )
            elif not init:
                st.ready = True
            self.changed()
            try:
                code = await proc.wait()
            finally:
                if probe is not None:
                    probe.cancel()
                    await asyncio.gather(probe, return_exceptions=True)
            if self.stopping:
                return code == 0
            ran = time.monotonic() - started
            message = proc.log_tail() if code != 0 else None
            st.terminate(code, message)
            self._log.info("container exited", container=name, code=code, seconds=round(ran, 1))
            self.changed()
            if code == 0 and (init or policy != "Always"):
                return True
            if policy == "Never":
                return False
            if ran > BACKOFF_RESET:
                backoff.reset()
                restart_at_once = True
            if restart_at_once:
                restart_at_once = False
            else:
                delay = backoff.next()
                text = (
                    f"back-off {delay:g}s restarting failed container={name} "
                    f"pod={self.name}_{self.namespace}({self.uid})"
                )
                st.back_off("CrashLoopBackOff", text)
                self.event("Warning", "BackOff", "Back-off restarting failed container")
                self.changed()
                await asyncio.sleep(delay)
            st.restart_count += 1

    # -- status --------------------------------------------------------------------------

    async def _status_writer(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce bursts of changes into one write
            await self._flush()

    async def _flush(self) -> None:
        if not self._dirty.is_set() or self.stopping:
            return
        self._dirty.clear()
        status = pod_status(self.state)
        try:
            await self.ctx.client.patch(
                PODS, self.name, {"status": status}, self.namespace, subresource="status"
            )
        except NotFound:
            return
        except (ApiError, OSError, aiohttp.ClientError) as e:
            self._log.warning("status write failed, retrying", error=str(e))
            await asyncio.sleep(1.0)
            self._dirty.set()
