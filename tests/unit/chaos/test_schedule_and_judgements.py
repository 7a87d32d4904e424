"""The chaos plan is a pure function of the seed, covers every kill target and storm
kind, and the sample judgements catch what they are meant to catch."""

from __future__ import annotations

from typing import Any

from kaito_dev.chaos.observe import Sample, duplicates, stall_visible, unexplained
from kaito_dev.chaos.schedule import COMPONENTS, PROFILES, STORMS, plan, render


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    short = PROFILES["short"]
    assert plan(7, 5, short) == plan(7, 5, short)
    assert render(7, short, plan(7, 5, short)) == render(7, short, plan(7, 5, short))
    assert plan(7, 5, short) != plan(8, 5, short)


def test_the_short_profile_kills_every_component_and_storms_every_kind() -> None:
    for seed in range(20):
        cycles = plan(seed, PROFILES["short"].cycles, PROFILES["short"])
        assert {c.kill.component for c in cycles if c.kill} == set(COMPONENTS), seed
        assert {c.storm.kind for c in cycles if c.storm} == set(STORMS), seed
        assert sum(1 for c in cycles if c.webhook_down) >= 1, seed
        assert {c.count for c in cycles} <= {1, 2}
        # The webhook outage is a kill of the workspace controller of its own.
        for c in cycles:
            if c.webhook_down and c.kill:
                assert c.kill.component != "workspace-controller"


def test_a_long_plan_uses_both_counts_and_both_phases() -> None:
    cycles = plan(1, 25, PROFILES["long"])
    assert {c.count for c in cycles} == {1, 2}
    assert {c.kill.phase for c in cycles if c.kill} == {"create", "delete"}
    assert len({c.workspace for c in cycles}) == 25


def cond(type_: str, status: str, reason: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason}


def obj(name: str, *conds: dict[str, str], **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": list(conds)},
    }


def sample(**kw: Any) -> Sample:
    return Sample(
        t=1.0,
        workspaces=kw.get("workspaces", {}),
        machines=kw.get("machines", []),
        nodes=kw.get("nodes", []),
        pools=kw.get("pools", {}),
    )


def test_two_live_machines_or_pools_for_a_count_of_one_are_duplicates() -> None:
    label = {"kaito.sh/workspace": "w"}
    machines = [obj("wsa", **label), obj("wsb", **label)]
    pools = {
        "wsa": {"provisioningState": "Succeeded", "nodes": ["n1"], "nodeLabels": label},
        "wsb": {"provisioningState": "Creating", "nodes": [], "nodeLabels": label},
    }
    found = duplicates(sample(machines=machines, pools=pools), {"w": 1})
    assert any("2 live Machines" in f for f in found)
    assert any("2 live agent pools" in f for f in found)
    # One of them deleting is a replacement, not a duplicate.
    pools["wsb"]["provisioningState"] = "Deleting"
    machines[1]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert duplicates(sample(machines=machines, pools=pools), {"w": 1}) == []


def test_two_nodes_of_one_pool_are_duplicates() -> None:
    nodes = [
        obj("n1", **{"kubernetes.azure.com/agentpool": "wsa"}),
        obj("n2", **{"kubernetes.azure.com/agentpool": "wsa"}),
    ]
    pools = {"wsa": {"provisioningState": "Succeeded", "nodes": ["n1"], "count": 1}}
    assert duplicates(sample(nodes=nodes, pools=pools), {}) == [
        "pool wsa: Nodes ['n1', 'n2'] for count 1"
    ]


def test_a_false_condition_without_a_reason_is_unexplained() -> None:
    ws = obj("w", cond("WorkspaceReady", "False"), cond("ResourceReady", "True"))
    assert unexplained(sample(workspaces={"w": ws})) == [
        "Workspace w: WorkspaceReady=False without a reason"
    ]


def test_a_stall_is_visible_only_through_a_reason() -> None:
    label = {"kaito.sh/workspace": "w"}
    silent = obj("w", cond("WorkspaceReady", "Unknown"))
    assert stall_visible(sample(workspaces={"w": silent}), "w", "create")[0] is False
    throttled = obj("wsa", cond("MachineLaunched", "False", "Throttled"), **label)
    visible, reasons = stall_visible(
        sample(workspaces={"w": silent}, machines=[throttled]), "w", "create"
    )
    assert visible and reasons == ["MachineLaunched:Throttled"]
    # Deleting: a Machine still there must say why (e.g. AgentPoolDeleteStalled).
    terminating = obj("wsa", cond("Ready", "True"), **label)
    assert (
        stall_visible(sample(workspaces={"w": silent}, machines=[terminating]), "w", "delete")[0]
        is False
    )
    stalled = obj("wsa", cond("MachineTerminating", "False", "AgentPoolDeleteStalled"), **label)
    assert stall_visible(sample(workspaces={"w": silent}, machines=[stalled]), "w", "delete")[0]
    assert stall_visible(sample(workspaces={}), "w", "delete")[0], "gone is not stalled"
