"""Kubernetes manifests as a user's tools read them: YAML that refuses duplicate keys, and
kustomizations rendered by the real kustomize (``kubectl kustomize``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from app.core.yaml_file import StrictLoader

Resource = dict[str, Any]


def load_all(text: str) -> list[Resource]:
    """Every non-empty document of ``text``; raises :class:`DuplicateKeyError`."""
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc]


def load(path: Path) -> Resource:
    """The one document of ``path``; raises :class:`DuplicateKeyError`."""
    (document,) = load_all(path.read_text())
    return document


def kustomize(directory: Path) -> list[Resource]:
    """What ``kubectl kustomize DIRECTORY`` renders, as ``kubectl apply -k`` would apply it.

    Raises:
        RuntimeError: kubectl is missing, or kustomize refused the kustomization (its
            message included).
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH: install it to render the manifests")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{done.stderr}")
    return load_all(done.stdout)
