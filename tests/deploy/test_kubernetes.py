"""deploy/: every kustomization renders with the real kustomize (``kubectl kustomize``, as
``kubectl apply -k`` renders it), every rendered object is valid against the Kubernetes
schemas, every YAML file loads with duplicate keys refused, and the Deployment keeps the
properties the fleet relies on.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from app.core.yaml_file import DuplicateKeyError
from support.manifests import kustomize, load_all

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30.0"


KUSTOMIZATIONS = sorted(
    str(path.parent.relative_to(DEPLOY)) for path in DEPLOY.rglob("kustomization.yaml")
)


def test_every_kustomization_is_found() -> None:
    assert KUSTOMIZATIONS == ["base", "overlays/dev", "overlays/production"]


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_yaml_file_has_no_duplicate_key(path: Path) -> None:
    assert load_all(path.read_text())


def test_a_duplicate_key_is_refused_by_the_loader_and_by_kustomize(tmp_path: Path) -> None:
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: '1'\n  a: '2'\n"
    (tmp_path / "configmap.yaml").write_text(manifest)
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - configmap.yaml\n")
    with pytest.raises(DuplicateKeyError, match="duplicate key 'a'"):
        load_all(manifest)
    with pytest.raises(RuntimeError, match="already defined"):
        kustomize(tmp_path)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_manifest_is_valid(name: str) -> None:
    resources = kustomize(DEPLOY / name)
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
    (deployment,) = [r for r in kustomize(DEPLOY / "base") if r["kind"] == "Deployment"]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_deployment_is_locked_down_and_follows_the_repository(name: str) -> None:
    resources = {r["kind"]: r for r in kustomize(DEPLOY / name)}
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
    # every pod serves the one shared repository, whose models the init containers seed
    settings = resources["ConfigMap"]["data"]
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert settings["CTR_MODEL_REPOSITORY"] == mounts["models"]
    seeded = {c["command"][c["command"].index("--model") + 1] for c in pod["initContainers"]}
    assert seeded == {"ctr", "cvr"}
    assert settings["CTR_DEFAULT_MODEL"] in seeded
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
