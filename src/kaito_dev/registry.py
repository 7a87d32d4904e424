"""A local OCI registry: Debian's ``docker-registry`` (CNCF distribution 2.8) on loopback.

No registry on the internet is reachable from these machines, so images built here
(``make images``), tuning output and adapter images go to this one. It is the real
server a cluster pulls from (the same distribution code as most private registries),
started as its own process with a generated configuration:

    with LocalRegistry(tmp / "registry") as reg:                  # anonymous
        push_to(f"{reg.address}/kaito-python/inference:0.1.0")
    with LocalRegistry(tmp / "registry", users={"kaito": "s3cret"}) as reg:
        reg.docker_config_json()        # the body of a kubernetes.io/dockerconfigjson Secret

With ``users`` the registry demands HTTP basic auth (an htpasswd file with bcrypt
hashes, the only kind distribution accepts) and answers 401 with a
``WWW-Authenticate: Basic`` challenge otherwise, as a private registry such as ACR does
for a wrong or missing pull/push secret. The binary comes from ``hack/registry.sh``
(fetched once per machine from Debian's package, nothing installed system-wide).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import bcrypt
import structlog
import yaml

from kaito_dev.controlplane import REPO_ROOT, ControlPlaneError, free_port

__all__ = ["LocalRegistry", "docker_config_json", "registry_binary"]

log = structlog.get_logger("kaito_dev.registry")

FETCH_SCRIPT = REPO_ROOT / "hack" / "registry.sh"


def registry_binary() -> Path:
    """The ``docker-registry`` binary, fetched once per machine by ``hack/registry.sh``."""
    try:
        out = subprocess.run(
            [str(FETCH_SCRIPT)], check=True, capture_output=True, text=True, timeout=600
        )
    except subprocess.CalledProcessError as e:
        raise ControlPlaneError(f"hack/registry.sh failed: {e.stderr[-2000:]}") from e
    return Path(out.stdout.strip().splitlines()[-1])


def docker_config_json(registry: str, username: str, password: str) -> str:
    """A ``.dockerconfigjson`` (the body of a ``kubernetes.io/dockerconfigjson`` Secret)."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    entry = {"username": username, "password": password, "auth": auth}
    return json.dumps({"auths": {registry: entry}})


class LocalRegistry:
    """One ``docker-registry`` process serving ``root`` on ``host`` (127.0.0.1 unless
    given; a free port by default). Two of them may share one ``storage`` (another
    listener on the same images, e.g. an authenticated one on an address pods reach).

    ``users`` (name -> password) turns on basic auth. `start` waits until ``/v2/``
    answers; `stop` terminates the process (the stored images stay in ``root``, so a
    restarted registry serves them again, as a real one with persistent storage does).
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        users: Mapping[str, str] | None = None,
        binary: Path | None = None,
        storage: Path | None = None,
    ) -> None:
        self.root = root
        self.storage = storage or root / "storage"
        """The blobs and manifests; another folder (a cache) keeps them across registries."""
        self.host = host
        self.port = port or free_port()
        self.users = dict(users or {})
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT``: the registry part of image references pushed here."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def docker_config_json(self, username: str | None = None) -> str:
        """A dockerconfigjson for this registry (the first user unless one is named)."""
        if not self.users:
            raise ValueError("this registry is anonymous: it takes no credentials")
        name = username or next(iter(self.users))
        return docker_config_json(self.address, name, self.users[name])

    def _write_config(self) -> Path:
        storage = self.storage
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json"},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.address, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.users:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=6)).decode()}\n"
                    for name, pw in self.users.items()
                )
            )
            config["auth"] = {"htpasswd": {"realm": "kaito-dev", "path": str(htpasswd)}}
        path = self.root / "config.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, *, timeout: float = 30.0) -> LocalRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        binary = self.binary or registry_binary()
        config = self._write_config()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(binary), "serve", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise ControlPlaneError(
                    f"docker-registry exited ({self.process.returncode}): {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ControlPlaneError(f"docker-registry not answering after {timeout:.0f}s")
            time.sleep(0.05)
        log.info(
            "registry serving", address=self.address, auth=bool(self.users), root=str(self.root)
        )
        return self

    def _answers(self) -> bool:
        """True once ``GET /v2/`` answers at all (200 anonymous, 401 with auth on)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                return True
        except urllib.error.HTTPError as e:
            return e.code == 401 and bool(self.users)
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self, *, remove_data: bool = False) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if remove_data:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
