"""A model's serving policy, ``models/<name>/policy.yaml``: which versions stay loaded, a
share of traffic split to another version, a version that shadows the one answering.

```yaml
versions: {latest: 2}        # or {specific: [v1, v2]}, or {all: true}; default: none more
split:                        # 5% of the requests that name no version, sticky by user
  to: canary                  # a label or a version
  percent: 5
  key: header:X-User-Id       # or feature:<field>; unset: drawn per request
shadow:                       # score a sample of requests again, off the request path
  version: candidate          # a label or a version
  sample: 1.0
cache_entries: 50000          # this model's share of the score cache (default: an even share)
prune: {keep_last: 5}         # remove older versions, never one the lines above name
```

Besides what ``versions`` keeps, a worker always loads the version ``CURRENT`` names, every
labelled version, and the split's and the shadow's. Every worker re-reads the file at each
poll, as it re-reads ``CURRENT`` and the labels.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.yaml_file import load_yaml
from app.features.errors import SpecError
from app.request import StickyKey

POLICY_FILE = "policy.yaml"
_STICKY = r"^(header|feature):.+$"


class Versions(BaseModel):
    """Versions kept loaded beyond the ones the pointers name: at most one rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latest: int | None = Field(default=None, ge=1, description="the N most recently exported")
    specific: tuple[str, ...] | None = Field(default=None, min_length=1)
    all: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> Versions:
        rules = [self.latest is not None, self.specific is not None, self.all]
        if sum(rules) > 1:
            raise ValueError("give one of latest, specific or all")
        return self


class Split(BaseModel):
    """``percent`` of a model's unaddressed requests go to version (or label) ``to``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: str = Field(min_length=1)
    percent: float = Field(gt=0, le=100)
    key: str | None = Field(default=None, pattern=_STICKY)

    @cached_property
    def sticky(self) -> StickyKey | None:
        """The key, parsed once: every request of a split reads it."""
        return None if self.key is None else StickyKey.parse(self.key)


class Shadow(BaseModel):
    """A version (or label) that scores ``sample`` of the requests again, off their path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    sample: float = Field(default=1.0, gt=0, le=1)


class Prune(BaseModel):
    """Versions removed at each poll (and by ``ctrserve prune``): every one but the
    ``keep_last`` most recently exported and those the pointers and the policy name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_last: int = Field(ge=1)


class ServingPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: Versions = Versions()
    split: Split | None = None
    shadow: Shadow | None = None
    cache_entries: int | None = Field(default=None, ge=0)
    prune: Prune | None = None

    def names(self) -> dict[str, str]:
        """The version or label each part of the policy names: ``{"split": ..., "shadow": ...}``."""
        parts = {}
        if self.split is not None:
            parts["split"] = self.split.to
        if self.shadow is not None:
            parts["shadow"] = self.shadow.version
        return parts


def load_policy(model_root: Path) -> ServingPolicy:
    """The policy in ``model_root/policy.yaml``; the default one when there is no file.

    Raises:
        SpecError: the file cannot be read, is not YAML (a key given twice included), or is
            not a policy; with the reason.
    """
    path = model_root / POLICY_FILE
    try:
        loaded = load_yaml(path)
    except FileNotFoundError:
        return ServingPolicy()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read it ({exc})") from None
    try:
        return ServingPolicy.model_validate(loaded or {})
    except ValidationError as exc:
        raise SpecError(f"{path}: {exc}") from None
