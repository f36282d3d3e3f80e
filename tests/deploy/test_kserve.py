"""deploy/kserve: a ServingRuntime and an InferenceService for the V2 protocol.

KServe's resources are custom resources, so the Kubernetes schemas do not cover them whole:
their pod parts (containers, volumes) are validated against the Kubernetes schemas inside a
Pod, and the KServe fields against a schema written from KServe's API reference
(serving.kserve.io v1alpha1 ServingRuntimeSpec, v1beta1 InferenceServiceSpec), strict about
unknown fields at every level we use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from app.main import create_app
from support.manifests import load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30.0"


def _strict(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


METADATA = {"type": "object", "required": ["name"]}
SERVING_RUNTIME = _strict(
    {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"const": "ServingRuntime"},
        "metadata": METADATA,
        "spec": _strict(
            {
                "supportedModelFormats": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "autoSelect": {"type": "boolean"},
                            "priority": {"type": "integer"},
                        },
                        ["name"],
                    ),
                },
                "protocolVersions": {
                    "type": "array",
                    "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                },
                "multiModel": {"type": "boolean"},
                "disabled": {"type": "boolean"},
                "containers": {"type": "array", "minItems": 1},
                "volumes": {"type": "array"},
                "nodeSelector": {"type": "object"},
                "tolerations": {"type": "array"},
            },
            ["containers"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
INFERENCE_SERVICE = _strict(
    {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": METADATA,
        "spec": _strict(
            {
                "predictor": _strict(
                    {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "model": _strict(
                            {
                                "modelFormat": _strict(
                                    {"name": {"type": "string"}, "version": {"type": "string"}},
                                    ["name"],
                                ),
                                "runtime": {"type": "string"},
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                                "storageUri": {"type": "string", "pattern": "^[a-z0-9]+://"},
                            },
                            ["modelFormat"],
                        ),
                    },
                    ["model"],
                )
            },
            ["predictor"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)


RUNTIME = load(DEPLOY / "kserve" / "servingruntime.yaml")
SERVICE = load(DEPLOY / "kserve" / "inferenceservice.yaml")


@pytest.mark.parametrize(
    ("resource", "schema"), [(RUNTIME, SERVING_RUNTIME), (SERVICE, INFERENCE_SERVICE)]
)
def test_kserve_resources_match_their_schemas(resource: dict, schema: dict) -> None:
    jsonschema.validate(resource, schema)


def test_schema_catches_a_typo() -> None:
    broken = {**SERVICE, "spec": {"predictor": {"modle": {}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, INFERENCE_SERVICE)


def test_the_runtime_pod_is_valid_kubernetes() -> None:
    spec = RUNTIME["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ctrserve-runtime"},
        "spec": {"containers": spec["containers"], "volumes": spec.get("volumes", [])},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_runtime_and_service_fit_together_and_fit_the_app() -> None:
    (container,) = RUNTIME["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    model = SERVICE["spec"]["predictor"]["model"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in RUNTIME["spec"]["protocolVersions"]
    assert {"v2", "grpc-v2"} <= set(RUNTIME["spec"]["protocolVersions"])
    # KServe's ports: REST on 8080, gRPC on 8081; the model repository at /mnt/models
    assert (env["CTR_PORT"], env["CTR_GRPC_PORT"]) == ("8080", "8081")
    assert "--model-dir=/mnt/models" in container["args"]  # the repository, every model in it
    assert env["CTR_DEFAULT_MODEL"] == "ctr"
    paths = create_app().openapi()["paths"]
    assert container["readinessProbe"]["httpGet"]["path"] in paths
    assert container["livenessProbe"]["httpGet"]["path"] in paths
    claim = load(DEPLOY / "base" / "model-repository.yaml")
    # the claim's root: the repository, every model in it
    assert model["storageUri"] == f"pvc://{claim['metadata']['name']}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
