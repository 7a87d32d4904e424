"""The runtime's admission webhook: AdmissionReview in and out, served over verified TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kaito.runtime import webhook
from kaito.runtime.webhook import AdmissionRequest, AdmissionResponse


def review(uid: str = "u-1", **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": uid, "operation": "CREATE", **request},
    }


def test_a_review_decodes_into_a_request_with_the_objects_namespace_filled_in() -> None:
    body = review(
        namespace="ns",
        kind={"group": "example.com", "version": "v1", "kind": "Foo"},
        object={"metadata": {"name": "foo"}, "spec": {}},
        dryRun=True,
    )
    req = webhook.decode_review(orjson.dumps(body))
    assert (req.uid, req.operation, req.name, req.namespace) == ("u-1", "CREATE", "foo", "ns")
    assert req.object == {"metadata": {"name": "foo", "namespace": "ns"}, "spec": {}}
    assert req.old_object is None and req.dry_run is True
    assert req.kind["kind"] == "Foo"


@pytest.mark.parametrize("body", [b"{}", b"not json", b'{"request": {}}', b'{"request": 1}'])
def test_a_body_without_request_and_uid_is_malformed(body: bytes) -> None:
    with pytest.raises(webhook.MalformedReview):
        webhook.decode_review(body)


def test_answers_encode_as_admission_v1_with_the_uid() -> None:
    assert webhook.encode_review("u", webhook.allowed())["response"] == {
        "uid": "u",
        "allowed": True,
    }
    warned = webhook.encode_review("u", webhook.allowed().with_warnings("careful"))
    assert warned["response"]["warnings"] == ["careful"]
    no = webhook.encode_review("u", webhook.denied("no"))["response"]
    assert no == {
        "uid": "u",
        "allowed": False,
        "status": {"code": 403, "reason": "Forbidden", "message": "no"},
    }
    broken = webhook.errored(500, RuntimeError("boom"))
    assert broken.code == 500 and not broken.allowed


def test_invalid_names_every_cause_as_the_apiservers_validation_does() -> None:
    answer = webhook.invalid(
        [webhook.Cause("spec.a", "bad"), webhook.Cause("spec.b", "worse")],
        group="example.com",
        kind="Foo",
        name="foo",
    )
    assert answer.status is not None
    assert answer.status["code"] == 422 and answer.status["reason"] == "Invalid"
    assert answer.status["message"] == "spec.a: bad; spec.b: worse"
    details = answer.status["details"]
    assert (details["group"], details["kind"], details["name"]) == ("example.com", "Foo", "foo")
    assert [c["field"] for c in details["causes"]] == ["spec.a", "spec.b"]


class Recorder:
    """A handler that denies names starting with "bad" and raises on "crash"."""

    def __init__(self) -> None:
        self.seen: list[AdmissionRequest] = []

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse:
        self.seen.append(request)
        if request.name == "crash":
            raise RuntimeError("handler bug")
        if request.name.startswith("bad"):
            return webhook.denied(f"{request.name} is bad")
        return webhook.allowed().with_warnings("looked at it")


HOSTS = ["127.0.0.1", "localhost"]


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[webhook.Server, Recorder, CollectorRegistry, ssl.SSLContext]]:
    cert = webhook.generate_certificate(HOSTS)
    cert.write(tmp_path)
    registry = CollectorRegistry()
    server = webhook.Server(
        webhook.ServerOptions(cert_dir=tmp_path, bind_address="127.0.0.1:0"), registry=registry
    )
    handler = Recorder()
    server.register("/validate/foos", handler)
    assert server.started_check() is not None
    async with server:
        assert server.started_check() is None
        yield server, handler, registry, ssl.create_default_context(cadata=cert.ca_pem.decode())
    assert server.started_check() is not None


async def post(server: webhook.Server, ctx: ssl.SSLContext, body: bytes) -> tuple[int, Any]:
    url = f"https://127.0.0.1:{server.port}/validate/foos"
    async with aiohttp.ClientSession() as s, s.post(url, data=body, ssl=ctx) as r:
        text = await r.read()
        return r.status, orjson.loads(text) if r.status == 200 else text.decode()


async def test_the_server_answers_each_review_with_its_handlers_decision(
    served: tuple[webhook.Server, Recorder, CollectorRegistry, ssl.SSLContext],
) -> None:
    server, handler, _, ctx = served
    good = review("u-good", object={"metadata": {"name": "good"}})
    status, answer = await post(server, ctx, orjson.dumps(good))
    assert status == 200
    assert answer["response"] == {"uid": "u-good", "allowed": True, "warnings": ["looked at it"]}

    bad = review("u-bad", object={"metadata": {"name": "bad-one"}})
    status, answer = await post(server, ctx, orjson.dumps(bad))
    assert answer["response"]["uid"] == "u-bad" and answer["response"]["allowed"] is False
    assert answer["response"]["status"]["message"] == "bad-one is bad"
    assert [r.name for r in handler.seen] == ["good", "bad-one"]


async def test_a_handler_that_raises_denies_with_500_and_the_server_keeps_serving(
    served: tuple[webhook.Server, Recorder, CollectorRegistry, ssl.SSLContext],
) -> None:
    server, _, _, ctx = served
    crash = review("u-crash", object={"metadata": {"name": "crash"}})
    status, answer = await post(server, ctx, orjson.dumps(crash))
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {"code": 500, "message": "handler bug"}
    status, answer = await post(server, ctx, orjson.dumps(review("u-next")))
    assert answer["response"]["allowed"] is True


async def test_a_malformed_review_gets_400_and_every_request_is_counted(
    served: tuple[webhook.Server, Recorder, CollectorRegistry, ssl.SSLContext],
) -> None:
    server, _, registry, ctx = served
    status, text = await post(server, ctx, b"{}")
    assert status == 400 and "AdmissionReview" in text
    await post(server, ctx, orjson.dumps(review()))
    exposition = generate_latest(registry).decode()
    path = 'webhook="/validate/foos"'
    assert f'controller_runtime_webhook_requests_total{{code="400",{path}}} 1.0' in exposition
    assert f'controller_runtime_webhook_requests_total{{code="200",{path}}} 1.0' in exposition
    assert f"controller_runtime_webhook_requests_in_flight{{{path}}} 0.0" in exposition
    assert f"controller_runtime_webhook_latency_seconds_count{{{path}}} 2.0" in exposition


async def test_a_certificate_rewritten_in_the_cert_dir_is_served_without_a_restart(
    tmp_path: Path,
) -> None:
    first = webhook.generate_certificate(HOSTS)
    first.write(tmp_path)
    options = webhook.ServerOptions(
        cert_dir=tmp_path, bind_address="127.0.0.1:0", cert_poll_interval=0.02
    )
    async with webhook.Server(options, registry=CollectorRegistry()) as server:
        assert server.port is not None
        second = webhook.generate_certificate(HOSTS)
        second.write(tmp_path)
        ctx = ssl.create_default_context(cadata=second.ca_pem.decode())
        async with asyncio.timeout(5):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
                except ssl.SSLCertVerificationError:
                    await asyncio.sleep(0.02)  # not reloaded yet
                    continue
                writer.close()
                await writer.wait_closed()
                break


def test_registering_two_handlers_on_one_path_is_refused(tmp_path: Path) -> None:
    server = webhook.Server(webhook.ServerOptions(cert_dir=tmp_path), registry=CollectorRegistry())
    server.register("/a", Recorder())
    with pytest.raises(ValueError, match="already registered"):
        server.register("/a", Recorder())
