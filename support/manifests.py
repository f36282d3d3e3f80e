"""Kubernetes manifests as a user's tools read them: YAML that refuses duplicate keys, and
kustomizations rendered by the real kustomize (``kubectl kustomize``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice: PyYAML keeps the last, kustomize refuses it."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_all(text: str) -> list[Resource]:
    """Every non-empty document of ``text``; raises :class:`DuplicateKeyError`."""
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc]


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
