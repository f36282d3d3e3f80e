"""YAML read strictly: a key given twice in one mapping is an error, not a silent overwrite
(PyYAML's ``safe_load`` keeps the last one, so a policy or config edited by hand could
mean something other than what its reader sees)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (kubectl and kustomize refuse it too)."""


class StrictLoader(yaml.SafeLoader):
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


def load_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (raises ``OSError`` or ``yaml.YAMLError``)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
