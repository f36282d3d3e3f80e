"""The loaded versions of one model and how a request reaches one of them: the version it
names, the split's share, ``CURRENT``'s; and a sampled shadow."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from app.model.scorer import Scorer
from app.repository.policy import ServingPolicy
from app.request import CURRENT_REQUEST, StickyKey, in_share, key_token

# The value of a field in a request's first row (a split keyed by a feature reads it).
FirstValue = Callable[[str], object]


@dataclass(frozen=True)
class Lineup:
    """The loaded versions of one model and how traffic reaches them. Immutable: a request
    reads ``registry.lineup`` once and is served by what it read, across any swap."""

    default: Scorer  # what a request that names no version gets (CURRENT)
    scorers: Mapping[str, Scorer]  # every loaded version, the default's included
    labels: Mapping[str, str]  # label -> a loaded version
    policy: ServingPolicy = field(default_factory=ServingPolicy)
    split_to: Scorer | None = None  # set only when the policy splits
    shadow_to: Scorer | None = None  # set only when the policy shadows

    def addressed(self, name: str) -> Scorer | None:
        """The version a request names, by label or by version."""
        version = self.labels.get(name, name)
        return self.scorers.get(version)

    def split(self, model: str, first: FirstValue | None) -> Scorer | None:
        """The split's version when a request that names no version falls in its share: by
        its sticky key's hash when it has one (the same key meets the same version in every
        worker), else drawn."""
        split = self.policy.split
        if split is None or self.split_to is None:
            return None
        share, sticky = split.percent / 100, split.sticky
        token = None if sticky is None else _sticky_token(sticky, first)
        chosen = random.random() < share if token is None else in_share(f"{model}/{token}", share)
        return self.split_to if chosen else None

    def shadow(self, answering: Scorer) -> Scorer | None:
        """The version that scores this request again, for the policy's sampled share of
        the requests the default version answers."""
        shadow, shadow_to = self.policy.shadow, self.shadow_to
        if shadow is None or shadow_to is None or answering is not self.default:
            return None
        if shadow_to is answering or random.random() >= shadow.sample:
            return None
        return shadow_to

    def serves(self) -> dict[str, list[str]]:
        """What each loaded version serves: ``default``, its labels, ``split``, ``shadow``."""
        roles: dict[str, list[str]] = {version: [] for version in self.scorers}
        roles[self.default.version].append("default")
        for label, version in self.labels.items():
            roles[version].append(label)
        if self.split_to is not None:
            roles[self.split_to.version].append("split")
        if self.shadow_to is not None:
            roles[self.shadow_to.version].append("shadow")
        return roles

    def same_as(self, other: Lineup) -> bool:
        """Whether two lineups serve the same versions the same way (no swap to announce)."""
        return (
            self.default is other.default
            and self.scorers.keys() == other.scorers.keys()
            and dict(self.labels) == dict(other.labels)
            and self.policy == other.policy
            and self.split_to is other.split_to
            and self.shadow_to is other.shadow_to
        )


def _sticky_token(sticky: StickyKey, first: FirstValue | None) -> str | None:
    """A request's sticky key: its header's value, or its first row's value of a field."""
    if sticky.source == "header":
        context = CURRENT_REQUEST.get()
        return None if context is None else context.header(sticky.name)
    return None if first is None else key_token(first(sticky.name))
