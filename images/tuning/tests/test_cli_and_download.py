"""The tuning command line and the data downloader (against a local HTTP server)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kaito_tuning.cli import main
from kaito_tuning.download import DownloadError, download
from kaito_tuning.train import COMPLETION_MARKER

PAYLOAD = b'{"text": "the cat sat on the mat"}\n' * 100


def test_lora_training_writes_a_loadable_adapter_and_a_marker(
    tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(PAYLOAD.decode())
    output = tmp_path / "adapter"
    code = main(
        [
            "--method", "lora",
            "--model", str(tiny_model),
            "--data", str(data),
            "--output", str(output),
            "--max-steps", "3",
            "--learning-rate", "1e-3",
            "--log-format", "json",
        ]
    )  # fmt: skip
    assert code == 0
    marker = json.loads((output / COMPLETION_MARKER).read_text())
    assert marker["method"] == "lora"
    assert marker["steps"] == 3
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(output))


def test_bad_data_or_config_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    base = ["--model", str(tiny_model), "--output", str(tmp_path / "out"), "--log-format", "json"]
    assert main([*base, "--data", str(tmp_path / "missing.jsonl")]) == 2
    config = tmp_path / "c.yaml"
    config.write_text("training_config: [1]\n")
    (tmp_path / "d.jsonl").write_text(PAYLOAD.decode())
    assert main([*base, "--data", str(tmp_path / "d.jsonl"), "--config", str(config)]) == 2
    assert not (tmp_path / "out").exists()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/data.jsonl":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/undeclared.jsonl":  # no Content-Length: counted while streaming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        elif self.path == "/slow.jsonl":
            self.send_response(200)
            self.end_headers()
            time.sleep(3)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def data_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_fetches_http_into_the_directory(data_server: str, tmp_path: Path) -> None:
    path = download(
        f"{data_server}/data.jsonl",
        tmp_path,
        index=0,
        max_bytes=10**6,
        timeout=10,
        allow_private=True,
    )
    assert path == tmp_path / "data.jsonl"
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["data.jsonl", "undeclared.jsonl"])
def test_download_enforces_the_size_limit(data_server: str, tmp_path: Path, name: str) -> None:
    with pytest.raises(DownloadError, match="limit"):
        download(
            f"{data_server}/{name}",
            tmp_path,
            index=0,
            max_bytes=100,
            timeout=10,
            allow_private=True,
        )
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_times_out(data_server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadError):
        download(
            f"{data_server}/slow.jsonl",
            tmp_path,
            index=0,
            max_bytes=10**6,
            timeout=1,
            allow_private=True,
        )
    assert time.monotonic() - started < 2.5
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "data.jsonl"])
def test_download_refuses_other_schemes(url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"is not an http\(s\) URL"):
        download(url, tmp_path, index=0, max_bytes=100, timeout=1)


def test_download_reports_http_errors(data_server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        download(
            f"{data_server}/nothing",
            tmp_path,
            index=0,
            max_bytes=100,
            timeout=5,
            allow_private=True,
        )


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("localhost", "a loopback address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("10.0.0.7", "a private address"),
        ("::1", "a loopback address"),
    ],
)
def test_download_refuses_internal_addresses_at_connect_time(
    host: str, why: str, data_server: str
) -> None:
    """The check runs on the address actually connected to (a name is resolved first),
    so nothing internal is reached even by a name that passed the URL check (DNS can
    change after admission): the connection fails before the local server is asked.
    (`download` refuses these URLs before connecting at all: test_contracts_parity.py.)"""
    from kaito_tuning import download as module

    port = int(data_server.rsplit(":", 1)[1])
    connect = module._guarded_connector(allow_private=False)
    with pytest.raises(DownloadError, match=why):
        connect((host, port))


def test_a_redirect_to_an_internal_address_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redirects go through the same check: a first hop that is allowed cannot bounce
    the downloader onto the metadata service. The first hop here is the loopback test
    server, let through as an in-cluster mirror is (``allow_private``); the redirect's
    target is then checked on its own and refused, because no mirror switch opens a
    metadata service."""
    from kaito_tuning import download as module

    checked: list[str] = []
    real = module._refusal

    def recorded(host: str, address: str, *, allow_private: bool = False) -> str | None:
        checked.append(address)
        return real(host, address, allow_private=allow_private)

    monkeypatch.setattr(module, "_refusal", recorded)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.jsonl"
        with pytest.raises(DownloadError, match=r"169\.254\.169\.254 is a cloud metadata address"):
            download(url, tmp_path, index=0, max_bytes=100, timeout=5, allow_private=True)
    finally:
        server.shutdown()
        server.server_close()
    assert checked == ["127.0.0.1", "169.254.169.254"]
    assert list(tmp_path.iterdir()) == []
