"""What a model's repository asks every worker to serve now: its pointers (``CURRENT``, the
labels) and its policy, read from disk as one :class:`Plan`. The registry loads a plan; prune
keeps every version a plan names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.repository.policy import ServingPolicy, load_policy
from app.repository.store import ModelRepository


@dataclass(frozen=True)
class Plan:
    """What the repository asks every worker to serve now."""

    current: str
    labels: Mapping[str, str]
    policy: ServingPolicy
    kept: tuple[str, ...]  # versions the policy keeps loaded beyond the pointers

    def resolve(self, name: str) -> str:
        """The version a label names, or ``name`` itself."""
        return self.labels.get(name, name)

    def wanted(self) -> dict[str, list[str]]:
        """Every version to load (the one ``CURRENT`` names first) with the parts that want
        it, so a version that cannot load is reported with what it was to play."""
        parts: dict[str, list[str]] = {self.current: ["the default"]}
        for label, version in self.labels.items():
            parts.setdefault(version, []).append(f"label {label}")
        for version in self.kept:
            parts.setdefault(version, []).append("policy.yaml's versions")
        for part, name in self.policy.names().items():
            parts.setdefault(self.resolve(name), []).append(f"policy.yaml's {part}")
        return parts


def read_plan(repository: ModelRepository, pinned_version: str | None = None) -> Plan:
    """The repository's plan now (``pinned_version`` in place of ``CURRENT`` if given).

    Raises:
        SpecError: a pointer or the policy cannot be read.
    """
    if repository.is_flat:
        return Plan(pinned_version or repository.current_version(), {}, ServingPolicy(), ())
    policy = load_policy(repository.root)
    current = pinned_version or repository.current_version()
    rule = policy.versions
    kept: tuple[str, ...] = ()
    if rule.all or rule.latest is not None:
        present = repository.versions()
        kept = tuple(present if rule.all else present[-(rule.latest or 1) :])
    elif rule.specific is not None:
        kept = rule.specific
    return Plan(current, repository.labels(), policy, kept)
