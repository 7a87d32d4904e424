"""The weights fetcher (``python -m kaito_inference.fetch``) with the real
``huggingface_hub`` client against the hub emulator; every fault is the emulator's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kaito_dev.hfhub import Fault, FaultKind, HubEmulator, Scope
from tests.integration.hfhub.conftest import (
    REPO,
    WEIGHTS,
    WEIGHTS_SIZE,
    Fetcher,
    make_model,
    tree_digest,
)


def _contents(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()]


def events(stderr: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def test_happy_path_files_and_hashes_match_the_published_folder(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    sha = hub.publish(REPO, model)
    run = await fetcher.run()
    assert run.code == 0, run.stderr
    target = fetcher.cache / "kaito-test--tiny@main"
    assert run.stdout.strip() == str(target)
    assert tree_digest(target) == tree_digest(model)
    marker = json.loads((target / ".kaito-complete").read_text())
    assert marker["commit"] == sha
    assert {f["path"] for f in marker["files"]} == set(tree_digest(model))
    weights = next(f for f in marker["files"] if f["path"] == WEIGHTS)
    assert weights["size"] == WEIGHTS_SIZE and len(weights["sha256"]) == 64
    # The LFS file came from the blob host, the others from /resolve; nothing twice.
    assert hub.count(route="cdn", method="GET", file=WEIGHTS) == 1
    assert hub.count(route="resolve", method="GET", file="config.json") == 1
    assert hub.bytes_sent() == sum(len(b) for b in _contents(model))
    progress = [e for e in events(run.stderr) if e["event"] == "weights progress"]
    assert progress and progress[-1]["bytes_done"] == progress[-1]["bytes_total"]


async def test_a_full_commit_sha_is_a_revision_and_names_the_target(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    sha = hub.publish(REPO, model)
    run = await fetcher.run(revision=sha)
    assert run.code == 0, run.stderr
    assert tree_digest(fetcher.cache / f"kaito-test--tiny@{sha}") == tree_digest(model)


async def test_a_stand_in_published_at_a_pinned_commit_is_fetched_at_that_revision(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    """What the local stack does: the preset's pinned sha serves other (stand-in) files."""
    pinned = "0a67737cc96d2554230f90338b163bc6380a2a85"
    hub.publish(REPO, model, commit=pinned, note="STAND-IN")
    run = await fetcher.run(revision=pinned)
    assert run.code == 0, run.stderr
    target = fetcher.cache / f"kaito-test--tiny@{pinned}"
    assert run.stdout.strip() == str(target)
    assert tree_digest(target) == tree_digest(model)
    assert (target / ".kaito-complete").exists()


async def test_resume_after_a_reset_mid_file_continues_with_range(
    hub: HubEmulator, fetcher: Fetcher, tmp_path: Path
) -> None:
    """The client keeps what it wrote and asks for the rest with Range. It writes in
    10 MiB chunks (huggingface_hub's DOWNLOAD_CHUNK_SIZE) and drops a partial chunk, so
    the file is bigger than one chunk and the reset comes after the first."""
    mib = 1024 * 1024
    model = make_model(tmp_path / "model")
    big = 24 * mib
    (model / WEIGHTS).write_bytes(bytes(range(256)) * (big // 256))
    hub.publish(REPO, model)
    cut = 15 * mib
    hub.inject(Fault(FaultKind.RESET, scope=Scope.CONTENT, path=WEIGHTS, after_bytes=cut))
    run = await fetcher.run()
    assert run.code == 0, run.stderr
    assert tree_digest(fetcher.cache / "kaito-test--tiny@main") == tree_digest(model)
    gets = [r for r in hub.requests if r.route == "cdn" and r.method == "GET"]
    kept = 10 * mib
    assert [(r.range, r.status, r.bytes_sent) for r in gets] == [
        (None, 200, cut),
        (f"bytes={kept}-", 206, big - kept),
    ]
    # Only the partial chunk was sent twice, not the file.
    assert hub.bytes_sent(file=WEIGHTS) == big + (cut - kept)
    assert not any(e["event"] == "fetch attempt failed, retrying" for e in events(run.stderr))


async def test_a_gated_repo_without_a_token_is_unauthorized(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model, gated_token="hf_right")
    run = await fetcher.run()
    assert run.code == 3, run.stderr
    assert run.termination is not None
    assert run.termination.startswith("Unauthorized: kaito-test/tiny: the repo is gated")
    assert "set presetOptions.modelAccessSecret" in run.termination
    assert run.termination.count("\n") == 1
    assert hub.count(route="resolve", status=401) >= 1
    assert not (fetcher.cache / "kaito-test--tiny@main" / ".kaito-complete").exists()


async def test_a_gated_repo_with_the_right_token_downloads(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model, gated_token="hf_right")
    run = await fetcher.run(token="hf_right")
    assert run.code == 0, run.stderr
    assert tree_digest(fetcher.cache / "kaito-test--tiny@main") == tree_digest(model)
    assert hub.count(route="resolve", method="HEAD", status=401) == 0


async def test_a_wrong_token_is_unauthorized(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model, gated_token="hf_right")
    run = await fetcher.run(token="hf_wrong")
    assert run.code == 3, run.stderr
    assert run.termination is not None
    assert run.termination.startswith("Unauthorized: kaito-test/tiny: the hub refused the token")
    assert "Invalid credentials" in run.termination
    # A valid token the gated repo does not grant: 403 from the hub, same reason.
    run = await fetcher.run(token="valid-but-not-granted")
    assert run.code == 3, run.stderr
    assert run.termination is not None
    assert run.termination.startswith("Unauthorized: kaito-test/tiny: the token was refused (403")


async def test_an_unknown_revision_is_revision_not_found(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model)
    run = await fetcher.run(revision="v9")
    assert run.code == 4, run.stderr
    assert run.termination == "RevisionNotFound: kaito-test/tiny: revision 'v9' does not exist\n"


async def test_an_unknown_repo_is_repository_not_found(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model)
    run = await fetcher.run(repo="kaito-test/missing")
    assert run.code == 5, run.stderr
    assert run.termination is not None
    assert run.termination.startswith("RepositoryNotFound: kaito-test/missing: no such repository")


async def test_two_fetchers_on_one_cache_download_each_file_once(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model)
    # Slow enough that the second fetcher starts while the first one downloads.
    hub.inject(Fault(FaultKind.SLOW, scope=Scope.CONTENT, bytes_per_second=200 * 1024, times=None))
    first, second = await asyncio.gather(fetcher.start(), fetcher.start())
    runs = await asyncio.gather(fetcher.wait(first), fetcher.wait(second))
    assert [r.code for r in runs] == [0, 0], [r.stderr for r in runs]
    for path in tree_digest(model):
        route = "cdn" if path == WEIGHTS else "resolve"
        assert hub.count(route=route, method="GET", file=path) == 1, path
    waited = [
        r
        for r in runs
        if any(e["event"] == "waiting for another fetcher" for e in events(r.stderr))
    ]
    assert len(waited) == 1
    assert any(e["event"] == "weights fetched by another fetcher" for e in events(waited[0].stderr))


async def test_a_completed_target_is_reused_without_a_request(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model)
    assert (await fetcher.run()).code == 0
    before = len(hub.requests)
    run = await fetcher.run()
    assert run.code == 0, run.stderr
    assert len(hub.requests) == before
    ready = next(e for e in events(run.stderr) if e["event"] == "weights ready")
    assert ready["downloaded"] is False


async def test_a_changed_file_is_detected_and_fetched_again(
    hub: HubEmulator, model: Path, fetcher: Fetcher, tmp_path: Path
) -> None:
    """A target whose file was truncated is not complete any more: the next fetch
    downloads that file again and verifies it."""
    hub.publish(REPO, model)
    assert (await fetcher.run()).code == 0
    target = fetcher.cache / "kaito-test--tiny@main"
    (target / WEIGHTS).write_bytes(b"torn")
    run = await fetcher.run()
    assert run.code == 0, run.stderr
    assert tree_digest(target) == tree_digest(model)
    assert hub.count(route="cdn", method="GET", file=WEIGHTS) == 2


async def test_a_burst_of_5xx_is_recovered_by_bounded_retries(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model)
    hub.inject(Fault(FaultKind.SERVER_ERROR, scope=Scope.ANY, times=3, status=503))
    run = await fetcher.run()
    assert run.code == 0, run.stderr
    assert hub.count(status=503) == 3
    assert tree_digest(fetcher.cache / "kaito-test--tiny@main") == tree_digest(model)
    retries = [e for e in events(run.stderr) if e["event"] == "fetch attempt failed, retrying"]
    assert retries and all("503" in str(e["error"]) for e in retries)


async def test_a_hub_that_keeps_failing_gives_up_with_download_failed(
    hub: HubEmulator, model: Path, fetcher: Fetcher
) -> None:
    hub.publish(REPO, model)
    hub.inject(Fault(FaultKind.SERVER_ERROR, scope=Scope.API, times=None, status=502))
    run = await fetcher.run("--max-attempts", "3")
    assert run.code == 1, run.stderr
    assert run.termination is not None
    assert run.termination.startswith(
        "DownloadFailed: kaito-test/tiny@main: gave up after 3 attempts"
    )
    assert "502" in run.termination
    assert hub.count(route="info") == 3


async def test_a_second_revision_gets_its_own_target(
    hub: HubEmulator, model: Path, fetcher: Fetcher, tmp_path: Path
) -> None:
    hub.publish(REPO, model)
    other = make_model(tmp_path / "model-v2", seed=2)
    hub.publish(REPO, other, revision="v2")
    assert (await fetcher.run()).code == 0
    assert (await fetcher.run(revision="v2")).code == 0
    assert tree_digest(fetcher.cache / "kaito-test--tiny@v2") == tree_digest(other)
    assert tree_digest(fetcher.cache / "kaito-test--tiny@main") == tree_digest(model)
