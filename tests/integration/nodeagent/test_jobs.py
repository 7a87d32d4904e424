"""A tuning Job on an emulated GPU node: hostPath data in, a LoRA adapter out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kaito.runtime.client import Client
from kaito.runtime.resource import CONFIGMAPS, JOBS
from tests.integration.nodeagent.conftest import GPU_TOLERATIONS, NodeAgentRig
from tests.integration.polling import poll_until

pytestmark = pytest.mark.cluster

CHAT = {
    "messages": [
        {"role": "system", "content": "you are a kaito assistant"},
        {"role": "user", "content": "what does the operator do"},
        {"role": "assistant", "content": "it serves a model on a gpu node"},
    ]
}


async def test_tuning_job_completes_and_writes_the_adapter(
    client: Client, narig: NodeAgentRig, tmp_path: Path
) -> None:
    data, output = tmp_path / "data", tmp_path / "output"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps(CHAT) for _ in range(8)) + "\n")
    job = {
        "metadata": {"name": "tune"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": GPU_TOLERATIONS,
                    "containers": [
                        {
                            "name": "tuning",
                            "image": "mcr.microsoft.com/aks/kaito/kaito-tuning-phi-3:0.0.1",
                            "command": ["python", "-m", "kaito_tuning"],
                            "args": [
                                "--method",
                                "lora",
                                "--model",
                                "/workspace/weights",
                                "--data",
                                "/mnt/data",
                                "--output",
                                "/mnt/output",
                                "--max-steps",
                                "2",
                                "--config",
                                "/mnt/config/training_config.yaml",
                            ],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/mnt/data"},
                                {"name": "output", "mountPath": "/mnt/output"},
                                {"name": "config", "mountPath": "/mnt/config"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "hostPath": {"path": str(data), "type": "Directory"}},
                        {"name": "output", "hostPath": {"path": str(output)}},
                        {"name": "config", "configMap": {"name": "tune-config"}},
                    ],
                }
            },
        },
    }
    config = {"training_config": {"LoraConfig": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}}
    await client.create(
        CONFIGMAPS,
        {
            "metadata": {"name": "tune-config"},
            "data": {"training_config.yaml": yaml.safe_dump(config)},
        },
        narig.namespace,
    )
    await client.create(JOBS, job, narig.namespace)
    await poll_until(
        lambda: client.get(JOBS, "tune", narig.namespace),
        lambda j: (j or {}).get("status", {}).get("succeeded") == 1,
        timeout=180,
        what="Job tune succeeded",
        interval=0.2,
    )
    assert (output / "adapter_config.json").exists(), sorted(p.name for p in output.iterdir())
    # the ConfigMap volume reached the trainer through the rewritten --config path
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 4
    pod = await narig.pod_of("job-name", "tune")
    assert pod is not None
    assert pod["status"]["phase"] == "Succeeded"
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert cs["state"]["terminated"]["reason"] == "Completed"
    # hostPaths belong to the machine: the agent never removes them
    assert data.exists()
