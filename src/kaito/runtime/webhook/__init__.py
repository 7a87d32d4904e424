"""Admission webhooks, as controller-runtime's ``pkg/webhook`` and ``pkg/webhook/admission``.

    from kaito.runtime import webhook

    server = webhook.Server(webhook.ServerOptions(cert_dir=path))
    server.register("/validate/foos", MyValidator())   # a Handler: handle(request) -> response
    async with server:
        await webhook.register(client, my_validating_webhook_configuration)

- `admission`: the AdmissionReview request/response, `Handler`, and the `allowed` /
  `denied` / `errored` / `invalid` answers.
- `server`: handlers by path over HTTPS (a watched certificate directory), with
  controller-runtime's ``controller_runtime_webhook_*`` metrics (`metrics`).
- `certs`: a CA of the webhook's own and its serving certificate, optionally shared by
  replicas through a Secret.
- `registration`: create-or-update of a ValidatingWebhookConfiguration with the CA bundle.

Nothing here knows a resource kind: a controller brings its rules (a `Handler`) and its
configuration, and wires them up with these parts.
"""

from kaito.runtime.webhook.admission import (
    AdmissionRequest,
    AdmissionResponse,
    Cause,
    Handler,
    HandlerFunc,
    MalformedReview,
    allowed,
    decode_review,
    denied,
    encode_review,
    errored,
    invalid,
)
from kaito.runtime.webhook.certs import (
    ServingCertificate,
    generate_certificate,
    load_or_create_certificate,
)
from kaito.runtime.webhook.registration import (
    VALIDATING_WEBHOOK_CONFIGURATIONS,
    client_config,
    register,
)
from kaito.runtime.webhook.server import Server, ServerOptions

__all__ = [
    "VALIDATING_WEBHOOK_CONFIGURATIONS",
    "AdmissionRequest",
    "AdmissionResponse",
    "Cause",
    "Handler",
    "HandlerFunc",
    "MalformedReview",
    "Server",
    "ServerOptions",
    "ServingCertificate",
    "allowed",
    "client_config",
    "decode_review",
    "denied",
    "encode_review",
    "errored",
    "generate_certificate",
    "invalid",
    "load_or_create_certificate",
    "register",
]
