"""Tuning output and adapters through a registry, against the real local registry.

The image programs run as the pods run them, in ``.venv-inference`` (the images'
interpreter): the pusher sidecar (``python -m kaito_tuning.push``) waits for a real
tuning run (``python -m kaito_tuning`` on the tiny model) and pushes its adapter to
Debian's ``docker-registry`` with htpasswd auth on; the image is then read back with the
registry API directly (plain urllib here, not the code under test) down to the layer's
bytes; the adapter init container's puller (``python -m kaito_inference.adapter_pull``)
writes it into an adapters folder that the inference server (transformers engine)
serves. A wrong secret, a missing one, a failed tuning run, a bad reference and an
unreachable registry each end with their own reason. The pod-level run (kubelet pulling
the images) belongs to the real-nodes work.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito_dev.controlplane import free_port
from kaito_dev.registry import LocalRegistry, docker_config_json

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-inference" / "bin" / "python"
USER, PASSWORD = "kaito", "s3cret"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def image_env() -> dict[str, str]:
    if not PYTHON.exists():
        raise AssertionError(f"{PYTHON} is missing: run `make setup-inference`")
    paths = [ROOT / "images" / "tuning", ROOT / "images" / "inference", ROOT / "src"]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, paths)),  # src: kaito_contracts only
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_image(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON), "-m", *argv], env=image_env(), capture_output=True, text=True, timeout=timeout
    )


def secret(folder: Path, name: str, body: str) -> Path:
    """A dockerconfigjson Secret as kubelet mounts it: ``<folder>/<name>/.dockerconfigjson``."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    path = folder / name / ".dockerconfigjson"
    path.write_text(body)
    return path


def registry_get(
    reg: LocalRegistry, path: str, accept: str = "", auth: bool = True
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://{reg.address}{path}")
    if accept:
        req.add_header("Accept", accept)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("reg"), users={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    run = run_image("kaito_inference.tiny_model", "--output", str(out), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def pushed(
    registry: LocalRegistry, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """(image, adapter folder): a tuning run's output, pushed by the sidecar once the run
    wrote its completion marker (the pusher starts first, as in the pod)."""
    work = tmp_path_factory.mktemp("tune")
    data, output = work / "data", work / "output"
    data.mkdir()
    output.mkdir()
    record = {
        "messages": [
            {"role": "user", "content": "what is kaito"},
            {"role": "assistant", "content": "kaito serves models on kubernetes"},
        ]
    }
    (data / "chat.jsonl").write_text((json.dumps(record) + "\n") * 4)
    good = secret(work / "secrets", "push-secret", registry.docker_config_json())
    image = f"{registry.address}/adapters/tiny-chat:0.1.0"
    pusher = subprocess.Popen(
        [
            str(PYTHON), "-m", "kaito_tuning.push", "--image", image, "--source", str(output),
            "--docker-config", str(good), "--secret-name", "push-secret",
            "--wait-for", str(output / "kaito_tuning_complete.json"),
            "--fail-marker", str(output / "kaito_tuning_failed"),
            "--label", "kaito.sh/preset=tiny", "--label", "kaito.sh/workspace=default/tune",
            "--poll", "0.2", "--termination-log", str(work / "termination-log"),
            "--log-format", "json",
        ],
        env=image_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        assert pusher.poll() is None, "the pusher must wait for the tuning run"
        tuning = run_image(
            "kaito_tuning", "--method", "lora", "--model", str(tiny_model), "--data", str(data),
            "--output", str(output), "--max-steps", "2", "--log-format", "json", timeout=300,
        )  # fmt: skip
        assert tuning.returncode == 0, tuning.stderr[-3000:]
        out, _ = pusher.communicate(timeout=60)
    finally:
        if pusher.poll() is None:
            pusher.kill()
    assert pusher.returncode == 0, out[-3000:]
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert events[:1] == ["tuning finished"]
    assert {"layer pushed", "config pushed", "manifest pushed", "adapter pushed"} <= set(events)
    return image, output


def test_the_pushed_image_is_an_oci_image_whose_layer_holds_the_adapter_under_data(
    registry: LocalRegistry, pushed: tuple[str, Path]
) -> None:
    image, adapter = pushed
    repo, tag = image.split("/", 1)[1].rsplit(":", 1)
    status, headers, body = registry_get(registry, f"/v2/{repo}/manifests/{tag}", OCI_MANIFEST)
    assert status == 200, body
    assert headers["Content-Type"] == OCI_MANIFEST
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    status, _, blob = registry_get(registry, f"/v2/{repo}/blobs/{layer['digest']}")
    assert status == 200
    assert layer["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer["size"] == len(blob)
    status, _, config_body = registry_get(
        registry, f"/v2/{repo}/blobs/{manifest['config']['digest']}"
    )
    config = json.loads(config_body)
    plain = gzip.decompress(blob)
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(plain).hexdigest()],
    }
    assert config["os"] == "linux"
    assert config["config"]["Labels"] == {
        "kaito.sh/preset": "tiny",
        "kaito.sh/workspace": "default/tune",
    }
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        files = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
        assert all(m.name == "data" or m.name.startswith("data/") for m in tar.getmembers())
    expected = {
        f"data/{p.relative_to(adapter).as_posix()}": p.read_bytes()
        for p in adapter.rglob("*")
        if p.is_file()
    }
    assert "data/adapter_config.json" in expected
    assert "data/adapter_model.safetensors" in expected
    assert files == expected  # byte for byte


def test_a_second_push_of_the_same_adapter_uploads_nothing_new(
    registry: LocalRegistry, pushed: tuple[str, Path], tmp_path: Path
) -> None:
    image, adapter = pushed
    good = secret(tmp_path, "push-secret", registry.docker_config_json())
    again = image.replace(":0.1.0", ":0.1.0-again")
    run = run_image(
        "kaito_tuning.push", "--image", again, "--source", str(adapter),
        "--docker-config", str(good), "--label", "kaito.sh/preset=tiny",
        "--label", "kaito.sh/workspace=default/tune", "--log-format", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    events = [json.loads(line)["event"] for line in run.stderr.splitlines() if line.startswith("{")]
    assert "layer already there" in events  # reproducible layer: same bytes, same digest
    assert "config already there" in events


def test_the_puller_fetches_the_adapter_and_the_server_serves_it(
    registry: LocalRegistry, pushed: tuple[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    image, adapter = pushed
    adapters = tmp_path / "adapter"
    pull_secret = secret(tmp_path / "pull-secrets", "regcred", registry.docker_config_json())
    other = secret(
        tmp_path / "pull-secrets", "other-registry", docker_config_json("x.io", "a", "b")
    )
    run = run_image(
        "kaito_inference.adapter_pull", "--image", image, "--dest", str(adapters / "tiny-chat"),
        "--docker-config", str(other), "--docker-config", str(pull_secret),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    pulled = {
        p.relative_to(adapters / "tiny-chat"): p.read_bytes()
        for p in (adapters / "tiny-chat").rglob("*")
        if p.is_file()
    }
    assert pulled == {
        p.relative_to(adapter): p.read_bytes() for p in adapter.rglob("*") if p.is_file()
    }

    port = free_port()
    server = subprocess.Popen(
        [
            str(PYTHON), "-m", "kaito_inference", "--engine", "transformers",
            "--model", str(tiny_model), "--served-model-name", "tiny",
            "--adapters-dir", str(adapters), "--host", "127.0.0.1", "--port", str(port),
            "--log-format", "json",
        ],
        env=image_env(),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "server not healthy after 120 s"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            models = {m["id"] for m in json.loads(r.read())["data"]}
        assert {"tiny", "tiny-chat"} <= models
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(
                {
                    "model": "tiny-chat",
                    "messages": [{"role": "user", "content": "what is kaito"}],
                    "max_tokens": 4,
                    "temperature": 0,
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        assert answer["model"] == "tiny-chat"
        assert answer["usage"]["completion_tokens"] > 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_wrong_secret_is_refused_with_its_reason_and_no_manifest_is_written(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    wrong = secret(tmp_path, "acr-secret", docker_config_json(registry.address, USER, "wrong"))
    image = f"{registry.address}/adapters/refused:1"
    term = tmp_path / "termination-log"
    run = run_image(
        "kaito_tuning.push", "--image", image, "--source", str(adapter),
        "--docker-config", str(wrong), "--secret-name", "acr-secret",
        "--termination-log", str(term),
    )  # fmt: skip
    assert run.returncode == 3  # no retry can fix it
    expected = (
        f"Unauthorized: pushing {image}: the registry refused the credentials of secret acr-secret"
    )
    assert term.read_text() == expected + "\n"
    assert run.stderr.splitlines()[-1] == expected  # FallbackToLogsOnError's last line
    status, _, _ = registry_get(registry, "/v2/adapters/refused/manifests/1", OCI_MANIFEST)
    assert status == 404

    # a Secret for another registry only: the registry demands credentials it has none of
    elsewhere = secret(tmp_path, "other", docker_config_json("myacr.azurecr.io", USER, PASSWORD))
    run = run_image(
        "kaito_tuning.push", "--image", image, "--source", str(adapter),
        "--docker-config", str(elsewhere), "--secret-name", "other", "--termination-log", str(term),
    )  # fmt: skip
    assert run.returncode == 3
    assert term.read_text().startswith(
        f"Unauthorized: pushing {image}: the registry demands credentials and secret other "
        f"has none for {registry.address}"
    )

    # the puller: the same refusal, worded for pulling
    run = run_image(
        "kaito_inference.adapter_pull", "--image", image, "--dest", str(tmp_path / "out"),
        "--docker-config", str(wrong), "--termination-log", str(term),
    )  # fmt: skip
    assert run.returncode == 3
    assert term.read_text().startswith(
        f"Unauthorized: pulling {image}: the registry refused the credentials of secret acr-secret"
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_tuning_run_pushes_nothing_and_fails_the_sidecar(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    output = tmp_path / "output"
    output.mkdir()
    good = secret(tmp_path, "push-secret", registry.docker_config_json())
    term = tmp_path / "termination-log"
    pusher = subprocess.Popen(
        [
            str(PYTHON), "-m", "kaito_tuning.push", "--image", f"{registry.address}/a/failed:1",
            "--source", str(output), "--docker-config", str(good),
            "--wait-for", str(output / "kaito_tuning_complete.json"),
            "--fail-marker", str(output / "kaito_tuning_failed"), "--poll", "0.1",
            "--termination-log", str(term),
        ],
        env=image_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    (output / "kaito_tuning_failed").touch()  # what the tuning container's wrapper does
    assert pusher.wait(30) == 1
    assert term.read_text().startswith("TuningFailed: the tuning container failed")
    status, _, _ = registry_get(registry, "/v2/a/failed/manifests/1", OCI_MANIFEST)
    assert status == 404


def test_bad_references_and_an_unreachable_registry_have_their_own_reasons(
    tmp_path: Path,
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    term = tmp_path / "termination-log"

    def push(image: str) -> tuple[int, str]:
        run = run_image(
            "kaito_tuning.push", "--image", image, "--source", str(adapter),
            "--termination-log", str(term),
        )  # fmt: skip
        return run.returncode, term.read_text()

    code, message = push("adapter:0.1")
    assert code == 3
    assert message.startswith(
        "InvalidImageReference: pushing adapter:0.1: 'adapter:0.1' names no registry host"
    )
    code, message = push(f"127.0.0.1:{free_port()}/adapters/a:1")
    assert code == 1  # a retry of the pod may find it up
    assert message.startswith("RegistryUnreachable: pushing 127.0.0.1:")
    code, message = push(f"127.0.0.1:{free_port()}/Adapters/A:1")
    assert (code, message.split(":")[0]) == (3, "InvalidImageReference")


def test_an_anonymous_registry_takes_pushes_and_pulls_without_a_secret(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    (adapter / "nested").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "nested" / "weights.bin").write_bytes(os.urandom(70_000))
    with LocalRegistry(tmp_path / "reg") as reg:
        image = f"{reg.address}/open/adapter:1"
        run = run_image("kaito_tuning.push", "--image", image, "--source", str(adapter))
        assert run.returncode == 0, run.stderr[-2000:]
        dest = tmp_path / "mnt" / "adapter" / "open"
        run = run_image("kaito_inference.adapter_pull", "--image", image, "--dest", str(dest))
        assert run.returncode == 0, run.stderr[-2000:]
    assert (dest / "nested" / "weights.bin").read_bytes() == (
        adapter / "nested" / "weights.bin"
    ).read_bytes()
    assert (dest / "adapter_config.json").read_text() == '{"r": 4}'


# -- the bearer-token flow (ACR, Docker Hub, Harbor) --------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """The registry's token service (docker's token auth spec): basic-auth'd GET
    ``/token?service=&scope=`` answers a JWT, signed RS256 by a key whose certificate the
    registry trusts (``rootcertbundle``) and carried in the header's ``x5c``. The real
    registry verifies it; only the issuer is ours, as a cluster's would be (ACR's)."""

    issuer = "kaito-test-issuer"
    service = "kaito-test-registry"

    def __init__(self, root: Path) -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kaito token signer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = root / "token-root.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[str] = []

    def token(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        access = []
        if scope:
            kind, repo, actions = scope.split(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": USER,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing + "." + _b64url(sig)

    def serve(self) -> tuple[str, object]:
        import http.server
        import threading
        import urllib.parse

        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                service.requests.append(self.path)
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": service.token(query.get("scope", [""])[0])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/token", server


class TokenRegistry(LocalRegistry):
    """The local registry with ``auth: token`` instead of htpasswd."""

    def __init__(self, root: Path, realm: str, tokens: TokenService) -> None:
        super().__init__(root)
        self.realm, self.tokens = realm, tokens

    def _write_config(self) -> Path:
        import yaml

        path = super()._write_config()
        config = yaml.safe_load(path.read_text())
        config["auth"] = {
            "token": {
                "realm": self.realm,
                "service": self.tokens.service,
                "issuer": self.tokens.issuer,
                "rootcertbundle": str(self.tokens.bundle),
            }
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                return True
        except urllib.error.HTTPError as e:
            return e.code == 401
        except (urllib.error.URLError, OSError):
            return False


def test_the_bearer_token_flow_pushes_and_pulls_and_refuses_a_wrong_secret(
    tmp_path: Path,
) -> None:
    tokens = TokenService(tmp_path)
    realm, server = tokens.serve()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 2}')
    try:
        with TokenRegistry(tmp_path / "reg", realm, tokens) as reg:
            status, headers, _ = registry_get(reg, "/v2/", auth=False)
            assert status == 401
            assert headers["Www-Authenticate"].startswith(f'Bearer realm="{realm}"')
            image = f"{reg.address}/tokens/adapter:1"
            good = secret(tmp_path, "acr-secret", docker_config_json(reg.address, USER, PASSWORD))
            run = run_image(
                "kaito_tuning.push", "--image", image, "--source", str(adapter),
                "--docker-config", str(good), "--secret-name", "acr-secret",
            )  # fmt: skip
            assert run.returncode == 0, run.stderr[-3000:] + reg._log_tail()
            # distribution lists a challenge's actions in no fixed order (a Go map)
            scopes = [
                urllib.parse.parse_qs(urllib.parse.urlsplit(r).query).get("scope", [""])[0]
                for r in tokens.requests
            ]
            assert any(
                s.startswith("repository:tokens/adapter:")
                and set(s.rsplit(":", 1)[1].split(",")) == {"pull", "push"}
                for s in scopes
            ), tokens.requests
            dest = tmp_path / "pulled"
            run = run_image(
                "kaito_inference.adapter_pull", "--image", image, "--dest", str(dest),
                "--docker-config", str(good),
            )  # fmt: skip
            assert run.returncode == 0, run.stderr[-3000:]
            assert (dest / "adapter_config.json").read_text() == '{"r": 2}'

            wrong = secret(tmp_path, "wrong", docker_config_json(reg.address, USER, "nope"))
            term = tmp_path / "termination-log"
            run = run_image(
                "kaito_tuning.push", "--image", image.replace(":1", ":2"), "--source", str(adapter),
                "--docker-config", str(wrong), "--secret-name", "wrong", "--termination-log", str(term),
            )  # fmt: skip
            assert run.returncode == 3
            assert term.read_text().startswith(
                f"Unauthorized: pushing {image.replace(':1', ':2')}: the registry refused the "
                "credentials of secret wrong"
            )
    finally:
        server.shutdown()  # type: ignore[attr-defined]
