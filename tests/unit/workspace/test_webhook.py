"""The webhook's pieces that need no apiserver: answers, certificates, options."""

from __future__ import annotations

import datetime as dt

from kaito.controllers.workspace.admission.validation import FieldError
from kaito.controllers.workspace.admission.webhook import WebhookOptions, denial
from kaito.runtime.webhook import encode_review
from kaito.runtime.webhook.certs import CERT_VALIDITY, generate_certificate


def test_allowed_review_carries_the_uid_and_no_status() -> None:
    answer = encode_review("u-1", denial([]))
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"] == {"uid": "u-1", "allowed": True}


def test_denied_review_lists_every_error_as_a_cause() -> None:
    errors = [FieldError("resource.count", "field is immutable"), FieldError("tuning", "x")]
    status = encode_review("u-2", denial(errors, name="ws"))["response"]["status"]
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["message"] == "resource.count: field is immutable; tuning: x"
    assert [c["field"] for c in status["details"]["causes"]] == ["resource.count", "tuning"]
    assert status["details"]["name"] == "ws"
    assert status["details"]["group"] == "kaito.sh" and status["details"]["kind"] == "Workspace"


def test_certificate_names_its_hosts_and_is_renewed_before_expiry() -> None:
    cert = generate_certificate(["svc.ns.svc", "127.0.0.1"])
    assert cert.usable_for(["127.0.0.1", "svc.ns.svc"])
    assert not cert.usable_for(["other.ns.svc"])
    later = dt.datetime.now(dt.UTC) + CERT_VALIDITY - dt.timedelta(days=10)
    assert not cert.usable_for(["127.0.0.1"], now=later)
    assert cert.ssl_context() is not None


def test_options_add_the_urls_host_to_the_certificate() -> None:
    opts = WebhookOptions(url="https://127.0.0.1:{port}/validate/workspaces")
    hosts = opts.hosts()
    assert hosts[0] == "kaito-workspace-webhook.kaito-system.svc"
    assert "127.0.0.1" in hosts
