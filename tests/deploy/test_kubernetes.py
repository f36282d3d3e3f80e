"""deploy/: every manifest, base and overlays, is valid against the Kubernetes schemas, and
the Deployment keeps the properties the fleet relies on.

There is no cluster or kustomize binary here, so overlays are rendered the way kustomize
applies their JSON 6902 patches (the only patch form they use), with the jsonpatch library;
a real ``kubectl kustomize deploy/overlays/<name>`` renders the same documents.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30.0"
Resource = dict[str, Any]


def render(directory: Path) -> list[Resource]:
    """The resources a kustomization produces: its resources, patched, namespaced."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        operations = jsonpatch.JsonPatch(yaml.safe_load((directory / patch["path"]).read_text()))
        target = patch["target"]
        matched = [
            r
            for r in resources
            if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
        ]
        assert matched, f"{directory}: patch {patch['path']} matches no resource"
        for resource in matched:
            resources[resources.index(resource)] = operations.apply(resource)
    if "namespace" in kustomization:
        for resource in resources:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    labels = kustomization.get("labels", [])
    for resource in resources:
        for group in labels:
            resource["metadata"].setdefault("labels", {}).update(group["pairs"])
    return copy.deepcopy(resources)


KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/production"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_manifest_is_valid(name: str) -> None:
    resources = render(DEPLOY / name)
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    for resource in resources:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    (deployment,) = [r for r in render(DEPLOY / "base") if r["kind"] == "Deployment"]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_deployment_is_locked_down_and_follows_the_repository(name: str) -> None:
    resources = {r["kind"]: r for r in render(DEPLOY / name)}
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (server,) = pod["containers"]
    for container in [server, *pod["initContainers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= container["resources"].keys()
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in server["env"]}
    assert env["CTR_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "PROMETHEUS_MULTIPROC_DIR" in env
    # every pod mounts the one shared repository that CTR_MODEL_DIR points into
    settings = resources["ConfigMap"]["data"]
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert settings["CTR_MODEL_DIR"].startswith(mounts["models"] + "/")
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    claim = resources["PersistentVolumeClaim"]
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    selector = resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert (
        selector.items()
        <= pod.get(
            "labels", resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
        ).items()
    )
