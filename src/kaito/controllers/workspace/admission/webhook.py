"""The validating admission webhook for Workspaces: HTTPS, its own CA, self-registering.

The apiserver calls webhooks over TLS and trusts exactly the CA bundle written into the
ValidatingWebhookConfiguration. So at start-up the webhook

1. gets its certificate: from a Secret when one is configured (``--webhook-cert-secret``:
   every replica must present a certificate the *same* CA signed, or the apiserver's calls
   fail whenever the Service picks another pod), else freshly generated in memory
   (local clusters, tests); the first replica creates the Secret, later ones reuse it;
2. starts serving (before registering: with ``failurePolicy: Fail`` a registration
   pointing at a closed port would block every Workspace write);
3. creates or updates its ValidatingWebhookConfiguration with the CA bundle and the
   client config (the Service in a cluster, a URL for a local apiserver).

Certificates: ``certs.py``.

The rules themselves are in ``validation.py``; this module is transport. It answers
``admission.k8s.io/v1`` AdmissionReviews for CREATE and UPDATE of workspaces (both
served versions) and exposes controller-runtime's webhook metrics.

Run it with the controller (`run_with_manager`) or standalone:
``python -m kaito.controllers.workspace.admission.webhook serve --webhook-cert-secret ''
--webhook-url 'https://127.0.0.1:{port}/validate/workspaces'`` (a local apiserver).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
import yaml
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from kaito.api.workspace import GROUP, VERSIONS
from kaito.controllers.workspace.admission.certs import (
    ServingCertificate,
    generate_certificate,
    load_or_create_certificate,
)
from kaito.controllers.workspace.admission.validation import FieldError, validate
from kaito.runtime import metrics
from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import AlreadyExists, Conflict, NotFound
from kaito.runtime.manager import Manager
from kaito.runtime.resource import CONFIGMAPS, Resource

log = structlog.get_logger("kaito.controllers.workspace.admission.webhook")

VALIDATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    namespaced=False,
)

WEBHOOK_NAME = "validation.workspace.kaito.sh"
CONFIGURATION_NAME = "validation.workspace.kaito.sh"
PATH = "/validate/workspaces"
NAMESPACE = "kaito-system"
SERVICE_NAME = "kaito-workspace-webhook"
SERVICE_PORT = 443
PORT = 9443
CERT_SECRET = "kaito-workspace-webhook-cert"
APP_LABELS = {"app.kubernetes.io/name": "kaito-workspace-controller"}
MANIFEST_PATH = (
    Path(__file__).resolve().parents[5] / "deploy" / "workspace-controller" / "webhook.yaml"
)

# controller-runtime's webhook metrics, same names and labels.
WEBHOOK_REQUESTS = Counter(
    "controller_runtime_webhook_requests_total",
    "Total number of admission requests by HTTP status code.",
    ["code", "webhook"],
    registry=metrics.REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "controller_runtime_webhook_latency_seconds",
    "Histogram of the latency of processing admission requests",
    ["webhook"],
    registry=metrics.REGISTRY,
)
WEBHOOK_IN_FLIGHT = Gauge(
    "controller_runtime_webhook_requests_in_flight",
    "Current number of admission requests being served.",
    ["webhook"],
    registry=metrics.REGISTRY,
)


# -- the ValidatingWebhookConfiguration and its Service --------------------------------


def webhook_configuration(
    *,
    ca_bundle: bytes | None = None,
    url: str | None = None,
    namespace: str = NAMESPACE,
    service_name: str = SERVICE_NAME,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration; ``url`` instead of the Service for local clusters."""
    client_config: dict[str, Any]
    if url:
        client_config = {"url": url}
    else:
        client_config = {
            "service": {
                "namespace": namespace,
                "name": service_name,
                "path": PATH,
                "port": SERVICE_PORT,
            }
        }
    if ca_bundle:
        client_config["caBundle"] = base64.b64encode(ca_bundle).decode()
    return {
        "apiVersion": VALIDATING_WEBHOOK_CONFIGURATIONS.api_version,
        "kind": VALIDATING_WEBHOOK_CONFIGURATIONS.kind,
        "metadata": {"name": CONFIGURATION_NAME, "labels": dict(APP_LABELS)},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": 10,
                "clientConfig": client_config,
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": list(VERSIONS),
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["workspaces"],
                        "scope": "Namespaced",
                    }
                ],
            }
        ],
    }


def webhook_service(
    *, namespace: str = NAMESPACE, service_name: str = SERVICE_NAME
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name, "namespace": namespace, "labels": dict(APP_LABELS)},
        "spec": {
            "type": "ClusterIP",
            "selector": dict(APP_LABELS),
            "ports": [
                {"name": "https-webhook", "port": SERVICE_PORT, "targetPort": "https-webhook"}
            ],
        },
    }


MANIFEST_HEADER = (
    "The workspace controller's validating webhook: its Service and registration.\n"
    "Generated by `python -m kaito.controllers.workspace.admission.webhook manifests`;"
    " do not edit.\n"
    "The caBundle is filled in by the controller at start-up (it generates its own CA).\n"
    "The controller's pod must expose container port 9443 named https-webhook."
)


def manifests_yaml() -> str:
    """``deploy/workspace-controller/webhook.yaml``, byte for byte."""
    header = "".join(f"# {line}\n" for line in MANIFEST_HEADER.splitlines())
    docs = [webhook_service(), webhook_configuration()]
    return header + "".join("---\n" + yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)


async def register(client: Client, desired: dict[str, Any]) -> None:
    """Create the configuration, or make the existing one's webhooks equal ``desired``'s."""
    name = desired["metadata"]["name"]
    for _ in range(5):
        try:
            current = await client.get(VALIDATING_WEBHOOK_CONFIGURATIONS, name)
        except NotFound:
            try:
                await client.create(VALIDATING_WEBHOOK_CONFIGURATIONS, desired)
            except AlreadyExists:
                continue
            log.info("webhook configuration created", name=name)
            return
        if current.get("webhooks") == desired["webhooks"]:
            return
        current["webhooks"] = desired["webhooks"]
        try:
            await client.update(VALIDATING_WEBHOOK_CONFIGURATIONS, current)
        except Conflict:
            continue
        log.info("webhook configuration updated", name=name)
        return
    raise RuntimeError(f"could not update ValidatingWebhookConfiguration {name}")


# -- the server -----------------------------------------------------------------------


def review_response(uid: str, errors: Sequence[FieldError], *, name: str = "") -> dict[str, Any]:
    """An AdmissionReview answer: allowed, or denied with every error in the message.

    Code 422 / reason Invalid, like the apiserver's own validation, so clients (and our
    runtime client's `Invalid`) treat a rejected spec the same either way.
    """
    response: dict[str, Any] = {"uid": uid, "allowed": not errors}
    if errors:
        response["status"] = {
            "code": 422,
            "reason": "Invalid",
            "message": "; ".join(str(e) for e in errors),
            "details": {
                "group": GROUP,
                "kind": "Workspace",
                "name": name,
                "causes": [
                    {"field": e.field, "message": e.message, "reason": "FieldValueInvalid"}
                    for e in errors
                ],
            },
        }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


@dataclass
class WebhookOptions:
    bind_address: str = f":{PORT}"
    """Where the HTTPS server listens. Default ":9443"."""
    namespace: str = NAMESPACE
    """The controller's namespace: the Service and the certificate Secret live there."""
    service_name: str = SERVICE_NAME
    cert_secret: str = CERT_SECRET
    """Secret holding the CA and certificate; "" keeps them in memory (one replica only)."""
    url: str = ""
    """Register with this URL instead of the Service (a local apiserver); default "" ."""
    extra_hosts: Sequence[str] = field(default_factory=tuple)
    """More names/IPs for the certificate (the URL's host is added automatically)."""
    register: bool = True
    """Create/update the ValidatingWebhookConfiguration at start-up. Default on."""

    def hosts(self) -> list[str]:
        svc, ns = self.service_name, self.namespace
        hosts = [f"{svc}.{ns}.svc", svc, f"{svc}.{ns}", f"{svc}.{ns}.svc.cluster.local"]
        if self.url:
            from urllib.parse import urlsplit

            host = urlsplit(self.url).hostname
            if host:
                hosts.append(host)
        hosts += [h for h in self.extra_hosts if h not in hosts]
        return hosts


class WebhookServer:
    """The HTTPS server; ``async with WebhookServer(client, options):`` or start()/stop()."""

    def __init__(self, client: Client, options: WebhookOptions | None = None) -> None:
        self.client = client
        self.options = options or WebhookOptions()
        self.certificate: ServingCertificate | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._registered = False

    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def ready_check(self) -> str | None:
        """For the manager's /readyz: None once serving and registered."""
        if self._runner is None:
            return "webhook server not started"
        if self.options.register and not self._registered:
            return "webhook not registered yet"
        return None

    async def start(self) -> None:
        opts = self.options
        hosts = opts.hosts()
        if opts.cert_secret:
            self.certificate = await load_or_create_certificate(
                self.client,
                namespace=opts.namespace,
                secret_name=opts.cert_secret,
                hosts=hosts,
                labels=APP_LABELS,
            )
        else:
            self.certificate = generate_certificate(hosts)
        host, _, port = opts.bind_address.rpartition(":")
        bind = (host or "0.0.0.0", int(port))
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post(PATH, self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(
            runner,
            bind[0],
            bind[1],
            ssl_context=self.certificate.ssl_context(),
            reuse_address=True,
        )
        await site.start()
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else bind[1]
        log.info("webhook serving", address=f"{bind[0]}:{self.port}", path=PATH)
        if opts.register:
            try:
                await register(self.client, self.configuration())
            except BaseException:
                await self.stop()  # __aexit__ does not run when __aenter__ raises
                raise
            self._registered = True

    def configuration(self) -> dict[str, Any]:
        """The ValidatingWebhookConfiguration pointing at this server, with our CA."""
        assert self.certificate is not None, "start() first"
        url = self.options.url.replace("{port}", str(self.port)) if self.options.url else None
        return webhook_configuration(
            ca_bundle=self.certificate.ca_pem,
            url=url,
            namespace=self.options.namespace,
            service_name=self.options.service_name,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(CONFIGMAPS, name, namespace)
        except NotFound:
            return None

    async def _handle(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        WEBHOOK_IN_FLIGHT.labels(PATH).inc()
        code = 200
        try:
            try:
                review = orjson.loads(await request.read())
                req = review["request"]
                uid = str(req["uid"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                code = 400
                return web.Response(
                    status=400, text="expected an admission.k8s.io/v1 AdmissionReview"
                )
            answer = await self._review(req, uid)
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        finally:
            WEBHOOK_IN_FLIGHT.labels(PATH).dec()
            WEBHOOK_REQUESTS.labels(str(code), PATH).inc()
            WEBHOOK_LATENCY.labels(PATH).observe(time.perf_counter() - t0)

    async def _review(self, req: dict[str, Any], uid: str) -> dict[str, Any]:
        operation = req.get("operation")
        obj = req.get("object") or {}
        meta = obj.setdefault("metadata", {})
        if not meta.get("namespace") and req.get("namespace"):
            meta["namespace"] = req["namespace"]
        name = meta.get("name") or req.get("name") or ""
        if operation not in ("CREATE", "UPDATE"):
            return review_response(uid, [])
        old = req.get("oldObject") if operation == "UPDATE" else None
        try:
            errors = await validate(obj, old, read_configmap=self._read_configmap)
        except Exception as e:  # a bug or an unreachable apiserver: deny, say why, keep serving
            log.exception("workspace validation failed", workspace=name)
            errors = [FieldError("(webhook)", f"validation could not complete: {e}")]
        if errors:
            log.info(
                "workspace denied",
                workspace=f"{meta.get('namespace')}/{name}",
                operation=operation,
                errors=[str(e) for e in errors],
            )
        else:
            log.debug("workspace admitted", workspace=f"{meta.get('namespace')}/{name}")
        return review_response(uid, errors, name=name)


async def run_with_manager(manager: Manager, options: WebhookOptions | None = None) -> None:
    """Serve the webhook for as long as ``manager.run()`` runs; /readyz includes it.

    The webhook starts before the manager and does not wait for leader election: the
    Service sends admission calls to every replica, followers included.
    """
    server = WebhookServer(manager.client, options)
    manager.add_readyz_check("webhook", server.ready_check)
    async with server:
        await manager.run()


# -- standalone entry point -----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The webhook's flags, for ``kaito workspace-controller`` and standalone use."""
    d = WebhookOptions()
    parser.add_argument(
        "--webhook-bind-address", default=d.bind_address, help=f"default {d.bind_address}"
    )
    parser.add_argument(
        "--webhook-namespace",
        default=os.environ.get("POD_NAMESPACE", d.namespace),
        help=f"namespace of the Service and Secret (default $POD_NAMESPACE, {d.namespace})",
    )
    parser.add_argument(
        "--webhook-service", default=d.service_name, help=f"default {d.service_name}"
    )
    parser.add_argument(
        "--webhook-cert-secret",
        default=d.cert_secret,
        help="Secret with the webhook's CA and certificate; '' keeps them in memory "
        f"(default {d.cert_secret})",
    )
    parser.add_argument(
        "--webhook-url",
        default="",
        help="register this URL instead of the Service, e.g. "
        "https://127.0.0.1:{port}/validate/workspaces for a local apiserver "
        "({port} is replaced by the bound port; default: use the Service)",
    )
    parser.add_argument(
        "--webhook-no-register",
        action="store_true",
        help="do not create/update the ValidatingWebhookConfiguration",
    )


def options_from_args(args: argparse.Namespace) -> WebhookOptions:
    return WebhookOptions(
        bind_address=args.webhook_bind_address,
        namespace=args.webhook_namespace,
        service_name=args.webhook_service,
        cert_secret=args.webhook_cert_secret,
        url=args.webhook_url,
        register=not args.webhook_no_register,
    )


async def serve(options: WebhookOptions, *, kubeconfig: str | None = None) -> None:
    """Run the webhook alone until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = await ClientConfig.load(kubeconfig)
    async with Client(config) as client, WebhookServer(client, options):
        await stop.wait()
    log.info("webhook stopped")


def main(argv: Sequence[str] | None = None) -> int:
    from kaito.runtime import log as runtime_log

    parser = argparse.ArgumentParser(
        prog="python -m kaito.controllers.workspace.admission.webhook",
        description="The Workspace validating webhook.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="serve the webhook (standalone)")
    srv.add_argument("--kubeconfig", default=None, help="default: in-cluster or $KUBECONFIG")
    add_arguments(srv)
    man = sub.add_parser("manifests", help=f"write {MANIFEST_PATH.name} (Service + registration)")
    man.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    man.add_argument("--out", type=Path, default=MANIFEST_PATH, help=f"default {MANIFEST_PATH}")
    args = parser.parse_args(argv)
    runtime_log.configure()
    if args.command == "manifests":
        want = manifests_yaml()
        if args.check:
            if not args.out.exists() or args.out.read_text() != want:
                print(f"{args.out} is stale: run `{parser.prog} manifests`", file=sys.stderr)
                return 1
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(want)
        print(f"wrote {args.out}")
        return 0
    asyncio.run(serve(options_from_args(args), kubeconfig=args.kubeconfig))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
