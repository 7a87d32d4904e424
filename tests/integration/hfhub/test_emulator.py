"""The hub emulator's wire protocol, as huggingface_hub 2.4 reads it (the fetcher tests
drive the real client; these pin the headers and codes it depends on)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from kaito.presets.catalog import load_catalog
from kaito_dev.hfhub import Fault, FaultKind, HubEmulator, Scope
from kaito_dev.hfhub.cli import parse_publish
from kaito_dev.hfhub.presets import DEV_TOKEN, preset_repos, publish_stand_in
from tests.integration.hfhub.conftest import REPO, WEIGHTS, WEIGHTS_SIZE, make_model


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as s:
        yield s  # type: ignore[misc]


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


async def test_publish_is_deterministic_and_a_change_is_a_new_commit(
    hub: HubEmulator, model: Path, tmp_path: Path
) -> None:
    sha = hub.publish(REPO, model)
    assert hub.publish(REPO, model) == sha
    (model / "config.json").write_text("{}")
    assert hub.publish(REPO, model) != sha
    # The old commit stays reachable by its sha.
    assert hub.store.resolve(REPO, sha).sha == sha
    with pytest.raises(ValueError, match="repo_id 'no-slash'"):
        hub.publish("no-slash", model)
    with pytest.raises(ValueError, match="not a directory"):
        hub.publish(REPO, tmp_path / "missing")


async def test_revision_info_resolves_branches_and_shas(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    sha = hub.publish(REPO, model)
    for rev in ("main", sha):
        async with http.get(f"{hub.url}/api/models/{REPO}/revision/{rev}?blobs=true") as r:
            assert r.status == 200
            info = await r.json()
        assert info["sha"] == sha and info["id"] == REPO
        weights = next(s for s in info["siblings"] if s["rfilename"] == WEIGHTS)
        assert weights["lfs"]["size"] == WEIGHTS_SIZE
        assert (
            weights["lfs"]["sha256"] == hashlib.sha256((model / WEIGHTS).read_bytes()).hexdigest()
        )
    async with http.get(f"{hub.url}/api/models/{REPO}/revision/nope") as r:
        assert (r.status, r.headers["X-Error-Code"]) == (404, "RevisionNotFound")
    async with http.get(f"{hub.url}/api/models/kaito-test/other") as r:
        assert (r.status, r.headers["X-Error-Code"]) == (401, "RepoNotFound")


async def test_tree_lists_files_folders_and_lfs(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    sha = hub.publish(REPO, model)
    async with http.get(f"{hub.url}/api/models/{REPO}/tree/{sha}?recursive=true") as r:
        tree = {e["path"]: e for e in await r.json()}
    assert tree["tokenizer"]["type"] == "directory"
    vocab = (model / "tokenizer" / "vocab.txt").read_bytes()
    assert tree["tokenizer/vocab.txt"]["oid"] == git_blob(vocab)
    assert "lfs" not in tree["config.json"]
    assert tree[WEIGHTS]["lfs"]["oid"] == hashlib.sha256((model / WEIGHTS).read_bytes()).hexdigest()
    async with http.get(f"{hub.url}/api/models/{REPO}/tree/{sha}") as r:
        assert {e["path"] for e in await r.json()} == {"config.json", "tokenizer", WEIGHTS}


async def test_resolve_headers_lfs_redirect_and_ranges(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    sha = hub.publish(REPO, model)
    config = (model / "config.json").read_bytes()
    async with http.head(f"{hub.url}/{REPO}/resolve/main/config.json") as r:
        assert r.status == 200
        assert r.headers["X-Repo-Commit"] == sha
        assert r.headers["ETag"] == f'"{git_blob(config)}"'
        assert int(r.headers["Content-Length"]) == len(config)
    async with http.get(
        f"{hub.url}/{REPO}/resolve/main/config.json", headers={"Range": "bytes=2-"}
    ) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 2-{len(config) - 1}/{len(config)}"
        assert await r.read() == config[2:]
    async with http.head(f"{hub.url}/{REPO}/resolve/main/{WEIGHTS}", allow_redirects=False) as r:
        assert r.status == 302
        weights = (model / WEIGHTS).read_bytes()
        assert r.headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
        assert r.headers["X-Linked-Size"] == str(WEIGHTS_SIZE)
        location = r.headers["Location"]
    assert location.startswith(hub.cdn_url + "/")  # another origin, as the hub's CDN
    async with http.get(location, headers={"Range": "bytes=-10"}) as r:
        assert (r.status, await r.read()) == (206, weights[-10:])
    async with http.get(location, headers={"Range": f"bytes={WEIGHTS_SIZE}-"}) as r:
        assert r.status == 416
    async with http.get(location.replace("Signature=", "Signature=0")) as r:
        assert r.status == 403
    async with http.head(f"{hub.url}/{REPO}/resolve/main/missing.bin") as r:
        assert (r.status, r.headers["X-Error-Code"]) == (404, "EntryNotFound")


async def test_gated_repos_and_tokens(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    hub.publish(REPO, model, gated_token="hf_right")
    url = f"{hub.url}/{REPO}/resolve/main/config.json"
    async with http.head(url) as r:
        assert (r.status, r.headers["X-Error-Code"]) == (401, "GatedRepo")
    async with http.head(url, headers={"Authorization": "Bearer valid-but-not-granted"}) as r:
        assert (r.status, r.headers["X-Error-Code"]) == (403, "GatedRepo")
    async with http.head(url, headers={"Authorization": "Bearer hf_wrong"}) as r:
        assert r.status == 401
        assert r.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    async with http.head(url, headers={"Authorization": "Bearer hf_right"}) as r:
        assert r.status == 200
    async with http.get(f"{hub.url}/api/models/{REPO}") as r:  # metadata stays public
        assert (await r.json())["gated"] == "manual"


async def test_faults_over_http_and_the_request_log(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    hub.publish(REPO, model)
    async with http.post(
        f"{hub.url}/_emulator/faults", json={"kind": "server-error", "times": 2}
    ) as r:
        assert r.status == 201
    async with http.post(f"{hub.url}/_emulator/faults", json={"kind": "slow"}) as r:
        assert r.status == 400
        assert "bytes_per_second" in (await r.json())["error"]
    async with http.post(f"{hub.url}/_emulator/faults", json={"kind": "x", "oops": 1}) as r:
        assert "oops" in (await r.json())["error"]
    statuses = []
    for _ in range(3):
        async with http.get(f"{hub.url}/api/models/{REPO}") as r:
            statuses.append(r.status)
    assert statuses == [503, 503, 200]
    hub.inject(Fault(FaultKind.RESET, scope=Scope.RESOLVE, path="*.json", after_bytes=5))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(f"{hub.url}/{REPO}/resolve/main/config.json") as r:
            await r.read()
    assert hub.count(route="resolve", method="GET", file="config.json") == 1
    assert hub.bytes_sent(file="config.json") == 5
    async with http.get(f"{hub.url}/_emulator/requests") as r:
        log = await r.json()
    assert [e["status"] for e in log[:3]] == [503, 503, 200]


async def test_publish_over_http(
    hub: HubEmulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    folder = make_model(tmp_path / "m")
    body = {"repo_id": REPO, "folder": str(folder), "revision": "v1"}
    async with http.post(f"{hub.url}/_emulator/repos", json=body) as r:
        assert r.status == 201
        sha = (await r.json())["sha"]
    assert hub.store.resolve(REPO, "v1").sha == sha
    async with http.post(f"{hub.url}/_emulator/repos", json={"repo_id": REPO}) as r:
        assert r.status == 400


async def test_publish_under_a_given_commit_with_a_note(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    """A stand-in served at the exact sha a preset pins, saying what it holds."""
    pinned = "0a67737cc96d2554230f90338b163bc6380a2a85"
    (model / ".complete").write_text("local marker\n")
    note = "STAND-IN: not the real weights"
    assert hub.publish(REPO, model, commit=pinned, note=note, exclude=[".complete"]) == pinned
    assert hub.store.resolve(REPO, "main").sha == pinned
    async with http.get(f"{hub.url}/api/models/{REPO}/revision/{pinned}") as r:
        info = await r.json()
    assert info["sha"] == pinned
    assert info["cardData"] == {"kaito_note": note}
    assert ".complete" not in {s["rfilename"] for s in info["siblings"]}
    async with http.get(f"{hub.url}/_emulator/state") as r:
        assert (await r.json())["notes"] == {REPO: note}
    # The same files under their own sha, and a note that stays when not given again.
    computed = hub.publish(REPO, model, exclude=[".complete"])
    assert computed != pinned
    assert hub.store.note(REPO) == note
    with pytest.raises(ValueError, match="commit 'abc': expected a full commit sha"):
        hub.publish(REPO, model, commit="abc")


async def test_every_preset_repo_serves_the_stand_in_at_its_pinned_revision(
    hub: HubEmulator, model: Path, http: aiohttp.ClientSession
) -> None:
    catalog = load_catalog()
    presets = [catalog.get(n) for n in catalog.names(include_deprecated=True)]
    fetched = [p for p in presets if p is not None and p.hugging_face is not None]
    pinned = {(p.hugging_face.repo, p.hugging_face.revision) for p in fetched if p.hugging_face}
    repos = preset_repos(catalog)
    assert {(r.repo, r.revision) for r in repos} == pinned
    published = publish_stand_in(hub, model)
    assert published == {f"{repo}@{rev}": rev for repo, rev in pinned}
    gated = {r.repo for r in repos if r.gated}
    assert gated == {
        p.hugging_face.repo for p in fetched if p.hugging_face and p.download_auth_required
    }
    assert gated, "the catalog has gated presets"
    for r in repos:
        async with http.get(f"{hub.url}/api/models/{r.repo}/revision/{r.revision}") as resp:
            info = await resp.json()
        assert info["sha"] == r.revision
        assert "STAND-IN" in info["cardData"]["kaito_note"]
        assert r.repo in info["cardData"]["kaito_note"]
        url = f"{hub.url}/{r.repo}/resolve/{r.revision}/config.json"
        async with http.get(url) as resp:
            assert resp.status == (401 if r.gated else 200), r
        if r.gated:
            headers = {"Authorization": f"Bearer {DEV_TOKEN}"}
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200


def test_cli_publish_argument() -> None:
    assert parse_publish("a/b=./m") == ("a/b", Path("./m"), None)
    assert parse_publish("a/b=./m@v2") == ("a/b", Path("./m"), "v2")
    with pytest.raises(ValueError, match="REPO=FOLDER"):
        parse_publish("a/b")


async def test_cli_serves_a_folder_at_a_commit_and_the_stand_in_under_the_presets(
    model: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """`kaito dev hf-hub` as the stack starts it: ``@<sha>`` is a commit, and
    ``--publish-presets`` says on its output that the repos hold a stand-in."""
    pinned = "1" * 40
    state = tmp_path / "state.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kaito_dev", "hf-hub", "--root", str(tmp_path / "root"),
        "--publish", f"{REPO}={model}@{pinned}", "--publish-presets", str(model),
        "--state-file", str(state),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while not state.exists() or not state.read_text().endswith("}"):
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
        info = json.loads(state.read_text())
        assert info["published"][f"{REPO}@{pinned}"] == pinned
        phi3 = next(r for r in preset_repos() if r.repo == "microsoft/Phi-3-mini-4k-instruct")
        assert info["published"][phi3.ref] == phi3.revision
        assert phi3.ref in info["stand_ins"]
        async with http.get(f"{info['url']}/api/models/{REPO}/revision/{pinned}") as r:
            assert (await r.json())["sha"] == pinned
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "each holding a STAND-IN" in text, text
    assert f"published {phi3.ref} (phi-3-mini-4k-instruct)" in text, text
    assert "gated: token " + DEV_TOKEN in text, text
