"""The ARM surface of the agent-pool API: authentication, routes, answers, errors.

Each handler checks the path's subscription, resource group and cluster as ARM does,
takes a matching fault (`faults.py`) first, then answers from the pools' state
(`state.py`) or starts an operation there. Answers and errors have ARM's shapes:
``{"error": {"code", "message"}}``, 201/202 with ``Azure-AsyncOperation`` and
``Location`` for operations, ``value``/``nextLink`` pages for lists.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from aiohttp import web

from kaito.runtime.meta import Obj
from kaito_dev.aks.faults import Fault, FaultInjector, FaultKind, Op, arm_answer
from kaito_dev.aks.state import (
    AgentPools,
    EmulatorConfig,
    Operation,
    Pool,
    RecordedRequest,
)

__all__ = ["ArmApi", "arm_error"]

log = structlog.get_logger("kaito_dev.aks")

_POOL_NAME_RULE = "must start with a lowercase letter, have at most 12 characters, a-z and 0-9"
PROVIDER = "providers/Microsoft.ContainerService"
_CLUSTER_PATH = (
    "/subscriptions/{sub}/resourceGroups/{rg}/" + PROVIDER + "/managedClusters/{cluster}"
)
_OPERATIONS_API_VERSION = "2016-03-30"
_LATE_FAULTS = (FaultKind.FAILED_LRO, FaultKind.NODE_NEVER_JOINS)
_OP = web.RequestKey("op", Op)
_POOL = web.RequestKey("pool", str)


def arm_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class ArmApi:
    """The handlers; `add_routes` puts them on an application with `middleware` first.

    Every request answered is appended to ``requests`` (the emulator's record).
    """

    def __init__(
        self,
        config: EmulatorConfig,
        state: AgentPools,
        faults: FaultInjector,
        requests: list[RecordedRequest],
    ) -> None:
        self.config, self.state, self.faults, self.requests = config, state, faults, requests

    def add_routes(self, router: web.UrlDispatcher) -> None:
        cluster = _CLUSTER_PATH
        pool = cluster + "/agentPools/{name}"
        ops = "/subscriptions/{sub}/" + PROVIDER + "/locations/{loc}"
        router.add_put(pool, self._put_pool)
        router.add_get(pool, self._get_pool)
        router.add_delete(pool, self._delete_pool)
        router.add_get(cluster + "/agentPools", self._list_pools)
        router.add_get(ops + "/operations/{op}", self._get_operation)
        router.add_get(ops + "/operationresults/{op}", self._get_operation_result)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Bearer token and ``api-version`` on every ARM request; records the answer."""
        started = time.monotonic()
        if request.path.startswith("/_emulator/"):
            return await handler(request)  # type: ignore[no-any-return]
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        accept = self.config.accept_token
        response: web.StreamResponse
        if not token:
            response = arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        elif accept is not None and not accept(token):
            response = arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        elif "api-version" not in request.query:
            response = arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as e:
                response = e
        self.requests.append(
            RecordedRequest(
                request.method, request.get(_OP, Op.ANY), request.get(_POOL), response.status
            )
        )
        log.debug(
            "arm request",
            method=request.method,
            path=request.path,
            status=response.status,
            seconds=round(time.monotonic() - started, 4),
        )
        return response

    # -- checks and answers ----------------------------------------------------------------

    def _check_cluster(self, request: web.Request) -> web.Response | None:
        info, cfg = request.match_info, self.config
        if info.get("sub") != cfg.subscription_id:
            return arm_error(
                404,
                "SubscriptionNotFound",
                f"The subscription '{info.get('sub')}' could not be found.",
            )
        if "rg" in info and info["rg"].lower() != cfg.resource_group.lower():
            return arm_error(
                404,
                "ResourceGroupNotFound",
                f"Resource group '{info['rg']}' could not be found.",
            )
        if "cluster" in info and info["cluster"].lower() != cfg.cluster_name.lower():
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerService/managedClusters/{info['cluster']}' "
                f"under resource group '{info['rg']}' was not found.",
            )
        return None

    def _fault_response(self, fault: Fault | None, vm_size: str | None) -> web.Response | None:
        """The fault's answer now; None for no fault or one that goes wrong later."""
        if fault is None:
            return None
        cfg = self.config
        answer = arm_answer(
            fault,
            cluster=cfg.cluster_name,
            resource_group=cfg.resource_group,
            location=cfg.location,
            vm_size=vm_size,
        )
        if answer is None:
            return None  # FAILED_LRO, NODE_NEVER_JOINS: accepted now, go wrong later
        status, code, message, headers = answer
        return arm_error(status, code, message, headers=headers or None)

    def _op_urls(self, request: web.Request, op: Operation) -> dict[str, str]:
        base = f"{request.scheme}://{request.host}/subscriptions/{self.config.subscription_id}"
        loc = f"{base}/{PROVIDER}/locations/{self.config.location}"
        query = f"?api-version={_OPERATIONS_API_VERSION}"
        headers = {
            "Azure-AsyncOperation": f"{loc}/operations/{op.id}{query}",
            "Location": f"{loc}/operationresults/{op.id}{query}",
        }
        if self.config.lro_retry_after is not None:
            headers["Retry-After"] = str(self.config.lro_retry_after)
        return headers

    def _pool_json(self, pool: Pool) -> Obj:
        cfg = self.config
        return {
            "id": (
                f"/subscriptions/{cfg.subscription_id}/resourceGroups/{cfg.resource_group}/"
                f"{PROVIDER}/managedClusters/{cfg.cluster_name}/agentPools/{pool.name}"
            ),
            "name": pool.name,
            "type": "Microsoft.ContainerService/managedClusters/agentPools",
            "properties": pool.properties,
        }

    def _not_found(self, name: str) -> web.Response:
        return arm_error(
            404,
            "NotFound",
            f"Could not find agent pool {name} in managed cluster {self.config.cluster_name}.",
        )

    @staticmethod
    def _validate(name: str, props: Obj) -> web.Response | None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name):
            return arm_error(
                400,
                "InvalidParameter",
                f"The value of parameter agentPoolProfile.name is invalid: '{name}' "
                f"{_POOL_NAME_RULE}.",
            )
        if not isinstance(props.get("vmSize"), str) or not props["vmSize"].startswith("Standard_"):
            return arm_error(
                400,
                "InvalidParameter",
                f"The value of parameter agentPoolProfile.vmSize is invalid: "
                f"{props.get('vmSize')!r}.",
            )
        disk = props.get("osDiskSizeGB")
        if disk is not None and (not isinstance(disk, int) or not (30 <= disk <= 2048)):
            return arm_error(
                400,
                "InvalidParameter",
                f"The value of parameter agentPoolProfile.osDiskSizeGB is invalid: {disk!r} "
                f"(must be between 30 and 2048).",
            )
        count = props.get("count", 1)
        if not isinstance(count, int) or not (0 <= count <= 1000):
            return arm_error(
                400, "InvalidParameter", f"agentPoolProfile.count is invalid: {count!r}."
            )
        return None

    # -- agent pools -----------------------------------------------------------------------

    async def _put_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[_OP], request[_POOL] = Op.CREATE, name
        if (bad := self._check_cluster(request)) is not None:
            return bad
        try:
            body = await request.json()
        except ValueError:
            return arm_error(400, "InvalidRequestContent", "The request content is not JSON.")
        props = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(props, dict):
            return arm_error(400, "InvalidRequestContent", "The request has no 'properties'.")
        vm_size = props.get("vmSize")
        fault = self.faults.take(Op.CREATE, name, vm_size if isinstance(vm_size, str) else None)
        if (answer := self._fault_response(fault, vm_size)) is not None:
            return answer
        if (invalid := self._validate(name, props)) is not None:
            return invalid
        existing = self.state.pools.get(name)
        if existing is not None and existing.busy and existing.op is not None:
            return arm_error(
                409,
                "OperationNotAllowed",
                f"Operation is not allowed because there's an in progress {existing.op.kind} "
                f"node pool operation started at {existing.op.start}. Please wait for it to "
                f"finish before starting a new operation.",
            )
        if existing is not None and existing.state == "Succeeded":
            return web.json_response(self._pool_json(existing), status=200)
        failure = fault if fault is not None and fault.kind in _LATE_FAULTS else None
        pool = self.state.begin_create(name, props, failure=failure)
        assert pool.op is not None
        return web.json_response(
            self._pool_json(pool), status=201, headers=self._op_urls(request, pool.op)
        )

    async def _get_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[_OP], request[_POOL] = Op.GET, name
        if (bad := self._check_cluster(request)) is not None:
            return bad
        if (answer := self._fault_response(self.faults.take(Op.GET, name), None)) is not None:
            return answer
        pool = self.state.pools.get(name)
        if pool is None:
            return self._not_found(name)
        return web.json_response(self._pool_json(pool))

    async def _list_pools(self, request: web.Request) -> web.Response:
        request[_OP] = Op.LIST
        if (bad := self._check_cluster(request)) is not None:
            return bad
        if (answer := self._fault_response(self.faults.take(Op.LIST), None)) is not None:
            return answer
        names = sorted(self.state.pools)
        start = int(request.query.get("$skipToken", "0") or 0)
        size = self.config.list_page_size
        page = names[start : start + size]
        body: Obj = {"value": [self._pool_json(self.state.pools[n]) for n in page]}
        if start + size < len(names):
            body["nextLink"] = (
                f"{request.scheme}://{request.host}{request.path}"
                f"?api-version={request.query['api-version']}&$skipToken={start + size}"
            )
        return web.json_response(body)

    async def _delete_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[_OP], request[_POOL] = Op.DELETE, name
        if (bad := self._check_cluster(request)) is not None:
            return bad
        if (answer := self._fault_response(self.faults.take(Op.DELETE, name), None)) is not None:
            return answer
        pool = self.state.pools.get(name)
        if pool is None:
            return web.Response(status=204)
        op = self.state.begin_delete(pool)
        return web.Response(status=202, headers=self._op_urls(request, op))

    # -- operations ------------------------------------------------------------------------

    async def _get_operation(self, request: web.Request) -> web.Response:
        request[_OP] = Op.POLL
        op = self.state.operations.get(request.match_info["op"])
        if op is not None:
            request[_POOL] = op.pool
        fault = self.faults.take(Op.POLL, op.pool if op else None)
        if (answer := self._fault_response(fault, None)) is not None:
            return answer
        if op is None or request.match_info["sub"] != self.config.subscription_id:
            return arm_error(404, "NotFound", "The operation was not found.")
        headers = {}
        if not op.done and self.config.lro_retry_after is not None:
            headers["Retry-After"] = str(self.config.lro_retry_after)
        return web.json_response(op.body(), headers=headers)

    async def _get_operation_result(self, request: web.Request) -> web.Response:
        request[_OP] = Op.POLL
        op = self.state.operations.get(request.match_info["op"])
        if op is None:
            return arm_error(404, "NotFound", "The operation was not found.")
        request[_POOL] = op.pool
        if not op.done:
            return web.Response(status=202, headers=self._op_urls(request, op))
        if op.status == "Failed":
            return web.json_response({"error": op.error}, status=400)
        return web.Response(status=204)
