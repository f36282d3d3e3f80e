"""deploy/training: the Kubeflow PyTorchJob for a multi-node training run.

A PyTorchJob is a custom resource, so it is checked in two parts: its own fields against the
training operator's API models (the ``kubeflow-training`` SDK, generated from the operator's
OpenAPI spec: every key must be one the model declares, every value of the declared type),
and each pod template against the Kubernetes schemas, inside a Pod. Then the command it runs
is parsed by the trainer's own CLI, so a renamed flag breaks this test, not a cluster run.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubeflow.training import models as kubeflow_models

from support.manifests import load
from training.cli import build_parser

JOB = Path(__file__).resolve().parents[2] / "deploy" / "training" / "pytorchjob.yaml"
KUBERNETES_VERSION = "1.30.0"
PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "object": object,
}


def check_model(value: Any, type_name: str, path: str = "") -> list[dict[str, Any]]:
    """Errors as exceptions; returns the pod templates found, to validate separately."""
    if type_name.startswith("list["):
        assert isinstance(value, list), f"{path}: expected a list"
        return [
            t for i, v in enumerate(value) for t in check_model(v, type_name[5:-1], f"{path}[{i}]")
        ]
    if type_name.startswith("dict("):
        assert isinstance(value, dict), f"{path}: expected a mapping"
        inner = type_name[5:-1].split(", ", 1)[1]
        return [t for k, v in value.items() for t in check_model(v, inner, f"{path}.{k}")]
    if type_name in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[type_name]), f"{path}: expected {type_name}"
        return []
    if type_name == "V1PodTemplateSpec":
        return [value]
    if type_name == "V1ObjectMeta":
        assert isinstance(value, dict), f"{path}: expected metadata"
        return []
    model = getattr(kubeflow_models, type_name)
    assert isinstance(value, dict), f"{path}: expected a {type_name} mapping"
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    unknown = set(value) - set(fields)
    assert not unknown, f"{path}: {type_name} has no field {sorted(unknown)}"
    return [
        t
        for key, item in value.items()
        for t in check_model(item, model.openapi_types[fields[key]], f"{path}.{key}")
    ]


def load_job() -> dict[str, Any]:
    return load(JOB)


def test_the_job_matches_the_training_operators_api() -> None:
    job = load_job()
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    templates = check_model(job, "KubeflowOrgV1PyTorchJob")
    assert len(templates) == 2  # Master and Worker
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", **template}
        pod["metadata"] = {"name": "ctrserve-train", **template.get("metadata", {})}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_the_check_catches_a_typo() -> None:
    job = load_job()
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replica"] = 3
    with pytest.raises(AssertionError, match="replica"):
        check_model(job, "KubeflowOrgV1PyTorchJob")


def test_the_job_runs_torchrun_on_the_trainer_with_valid_flags() -> None:
    job = load_job()
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert all(r["restartPolicy"] == "Never" for r in replicas.values())
    assert job["spec"]["runPolicy"]["backoffLimit"] == 0
    for replica in replicas.values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator finds the container by name
        assert container["command"] == ["torchrun"]
        arguments = container["args"]
        assert arguments[:2] == ["-m", "training"]
        parsed = build_parser().parse_args(arguments[2:])
        assert parsed.command == "train", shlex.join(arguments)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert parsed.cache_dir.parent.as_posix() in mounts  # shards on the shared volume
        assert parsed.out.parent.as_posix() in mounts  # the model into the repository volume
