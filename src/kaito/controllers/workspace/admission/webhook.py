"""The Workspace validating webhook: which path, which rules, which registration.

The machinery is the runtime's (`kaito.runtime.webhook`: AdmissionReview, HTTPS server
with a watched certificate, metrics, certificates, registration); this module only
wires it for Workspaces. At start-up the webhook

1. gets its certificate: from a Secret when one is configured (``--webhook-cert-secret``:
   every replica must present a certificate the *same* CA signed, or the apiserver's calls
   fail whenever the Service picks another pod), else freshly generated in memory
   (local clusters, tests); the first replica creates the Secret, later ones reuse it;
2. starts serving (before registering: with ``failurePolicy: Fail`` a registration
   pointing at a closed port would block every Workspace write);
3. creates or updates its ValidatingWebhookConfiguration with the CA bundle and the
   client config (the Service in a cluster, a URL for a local apiserver).

The rules themselves are in ``validation.py``; the committed Service and registration
in ``manifests.py``; the flags and the standalone command in ``cli.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from kaito.api.workspace import GROUP, VERSIONS
from kaito.controllers.workspace.admission.validation import FieldError, validate, warnings
from kaito.presets.catalog import Catalog, load_catalog
from kaito.runtime import webhook
from kaito.runtime.client import Client
from kaito.runtime.errors import NotFound
from kaito.runtime.manager import Manager
from kaito.runtime.resource import CONFIGMAPS
from kaito.runtime.webhook import (
    VALIDATING_WEBHOOK_CONFIGURATIONS,
    AdmissionRequest,
    AdmissionResponse,
    ServingCertificate,
)

__all__ = [
    "CERT_SECRET",
    "CONFIGURATION_NAME",
    "PATH",
    "VALIDATING_WEBHOOK_CONFIGURATIONS",
    "WebhookOptions",
    "WebhookServer",
    "WorkspaceValidator",
    "denial",
    "run_with_manager",
    "webhook_configuration",
]

log = structlog.get_logger("kaito.controllers.workspace.admission.webhook")

WEBHOOK_NAME = "validation.workspace.kaito.sh"
CONFIGURATION_NAME = "validation.workspace.kaito.sh"
PATH = "/validate/workspaces"
NAMESPACE = "kaito-system"
SERVICE_NAME = "kaito-workspace-webhook"
SERVICE_PORT = 443
PORT = 9443
CERT_SECRET = "kaito-workspace-webhook-cert"
CA_NAME = "kaito-workspace-webhook-ca"
APP_LABELS = {"app.kubernetes.io/name": "kaito-workspace-controller"}


def webhook_configuration(
    *,
    ca_bundle: bytes | None = None,
    url: str | None = None,
    namespace: str = NAMESPACE,
    service_name: str = SERVICE_NAME,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration; ``url`` instead of the Service for local clusters."""
    client_config = webhook.client_config(
        url=url,
        service=(namespace, service_name),
        path=PATH,
        port=SERVICE_PORT,
        ca_bundle=ca_bundle,
    )
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


def denial(errors: Sequence[FieldError], *, name: str = "") -> AdmissionResponse:
    """Allowed without errors; else 422 Invalid with every error as a cause, like the
    apiserver's own validation, so clients (and the runtime client's `Invalid`) treat a
    rejected spec the same either way."""
    if not errors:
        return webhook.allowed()
    causes = [webhook.Cause(e.field, e.message) for e in errors]
    return webhook.invalid(causes, group=GROUP, kind="Workspace", name=name)


class WorkspaceValidator:
    """The admission `Handler` for CREATE and UPDATE of Workspaces (both versions)."""

    def __init__(self, client: Client, *, catalog: Catalog | None = None) -> None:
        self.client = client
        self.catalog = catalog or load_catalog()
        """Presets and SKUs, resolved once for every review (injected in tests)."""

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse:
        if request.operation not in ("CREATE", "UPDATE"):
            return webhook.allowed()
        obj = request.object or {"metadata": {}}
        old = request.old_object if request.operation == "UPDATE" else None
        workspace = f"{request.namespace}/{request.name}"
        try:
            errors = await validate(
                obj, old, read_configmap=self._read_configmap, catalog=self.catalog
            )
        except Exception as e:  # a bug or an unreachable apiserver: deny, say why, keep serving
            log.exception("workspace validation failed", workspace=request.name)
            errors = [FieldError("(webhook)", f"validation could not complete: {e}")]
        if errors:
            log.info(
                "workspace denied",
                workspace=workspace,
                operation=request.operation,
                errors=[str(e) for e in errors],
            )
            return denial(errors, name=request.name)
        log.debug("workspace admitted", workspace=workspace)
        if request.operation == "CREATE":
            return webhook.allowed().with_warnings(*warnings(obj, catalog=self.catalog))
        return webhook.allowed()

    async def _read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(CONFIGMAPS, name, namespace)
        except NotFound:
            return None


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
        if self.url and (host := urlsplit(self.url).hostname):
            hosts.append(host)
        hosts += [h for h in self.extra_hosts if h not in hosts]
        return hosts


class WebhookServer:
    """The Workspace webhook; ``async with WebhookServer(client, options):`` or start()/stop().

    The certificate is written into a private directory for the runtime's server, which
    serves whatever pair is there (as it would a mounted Secret); the directory goes on
    `stop`.
    """

    def __init__(
        self,
        client: Client,
        options: WebhookOptions | None = None,
        *,
        catalog: Catalog | None = None,
    ) -> None:
        self.client = client
        self.options = options or WebhookOptions()
        self.catalog = catalog
        self.certificate: ServingCertificate | None = None
        self.server: webhook.Server | None = None
        self._cert_dir: Path | None = None
        self._registered = False

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def ready_check(self) -> str | None:
        """For the manager's /readyz: None once serving and registered."""
        if self.server is None or self.server.started_check() is not None:
            return "webhook server not started"
        if self.options.register and not self._registered:
            return "webhook not registered yet"
        return None

    async def start(self) -> None:
        opts = self.options
        hosts = opts.hosts()
        if opts.cert_secret:
            self.certificate = await webhook.load_or_create_certificate(
                self.client,
                namespace=opts.namespace,
                secret_name=opts.cert_secret,
                hosts=hosts,
                labels=APP_LABELS,
                ca_name=CA_NAME,
            )
        else:
            self.certificate = webhook.generate_certificate(hosts, ca_name=CA_NAME)
        self._cert_dir = Path(tempfile.mkdtemp(prefix="kaito-webhook-"))
        self.certificate.write(self._cert_dir)
        self.server = webhook.Server(
            webhook.ServerOptions(cert_dir=self._cert_dir, bind_address=opts.bind_address)
        )
        self.server.register(PATH, WorkspaceValidator(self.client, catalog=self.catalog))
        try:
            await self.server.start()
            if opts.register:
                await webhook.register(self.client, self.configuration())
                self._registered = True
        except BaseException:
            await self.stop()  # __aexit__ does not run when __aenter__ raises
            raise

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
        if self.server is not None:
            await self.server.stop()
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None


async def run_with_manager(
    manager: Manager, options: WebhookOptions | None = None, *, catalog: Catalog | None = None
) -> None:
    """Serve the webhook for as long as ``manager.run()`` runs; /readyz includes it.

    The webhook starts before the manager and does not wait for leader election: the
    Service sends admission calls to every replica, followers included.
    """
    server = WebhookServer(manager.client, options, catalog=catalog)
    manager.add_readyz_check("webhook", server.ready_check)
    async with server:
        await manager.run()
