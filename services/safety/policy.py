"""Per-tenant screening policy loaded from YAML: for each direction and finding type, an action
(allow / redact / block) and the score a finding needs before that action applies.

Tenant entries override the defaults key by key; a tenant rule may give only `action` or only
`threshold`, the other half comes from the default rule for that type.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.safety.findings import MESSAGE_LEVEL_TYPES

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent / "policy.yaml"
_DIRECTION_KEYS = ("input", "output")
_TOP_KEYS = {"restore_redacted", "injection_roles", *_DIRECTION_KEYS}


class PolicyError(ValueError):
    """The policy file is malformed."""


class Action(enum.IntEnum):
    """What happens to a finding; larger is stricter."""

    ALLOW = 1
    REDACT = 2
    BLOCK = 3


class Direction(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class Rule:
    """The action for one finding type, applied when the score reaches `threshold`."""

    action: Action
    threshold: float = 0.0

    def decide(self, score: float) -> Action:
        return self.action if score >= self.threshold else Action.ALLOW

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action.name.lower(), "threshold": self.threshold}


@dataclass(frozen=True)
class DirectionPolicy:
    """Rules for one direction; `default` covers types without a rule of their own."""

    rules: Mapping[str, Rule]
    default: Rule = Rule(Action.ALLOW)

    def rule(self, kind: str) -> Rule:
        return self.rules.get(kind, self.default)

    def decide(self, kind: str, score: float) -> Action:
        return self.rule(kind).decide(score)

    def reported(self, kind: str, score: float) -> bool:
        """Whether a finding is worth reporting: it reached its rule's threshold."""
        return score >= self.rule(kind).threshold

    def active(self, kind: str) -> bool:
        """Whether a finding of this type could change anything (its rule is not plain allow)."""
        return self.rule(kind).action is not Action.ALLOW


@dataclass(frozen=True)
class Policy:
    """The effective policy of one tenant."""

    tenant: str
    input: DirectionPolicy
    output: DirectionPolicy
    restore_redacted: bool = True
    injection_roles: frozenset[str] = field(default_factory=lambda: frozenset({"user", "tool"}))

    def direction(self, direction: Direction) -> DirectionPolicy:
        return self.input if direction is Direction.INPUT else self.output

    def to_yaml(self) -> str:
        def side(p: DirectionPolicy) -> dict[str, object]:
            return {"default": p.default.as_dict(), **{k: p.rules[k].as_dict() for k in sorted(p.rules)}}

        doc = {
            "tenant": self.tenant,
            "restore_redacted": self.restore_redacted,
            "injection_roles": sorted(self.injection_roles),
            "input": side(self.input),
            "output": side(self.output),
        }
        return yaml.safe_dump(doc, sort_keys=False)


def _parse_rule(where: str, raw: Any, base: Rule | None) -> Rule:
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping with 'action' and/or 'threshold'")
    unknown = set(raw) - {"action", "threshold"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    if "action" in raw:
        name = str(raw["action"]).upper()
        if name not in Action.__members__:
            raise PolicyError(f"{where}: action must be allow, redact or block, got {raw['action']!r}")
        action = Action[name]
    elif base is not None:
        action = base.action
    else:
        raise PolicyError(f"{where}: 'action' is required")
    threshold = raw.get("threshold", base.threshold if base is not None else 0.0)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise PolicyError(f"{where}: threshold must be a number in [0, 1], got {threshold!r}")
    return Rule(action, float(threshold))


def _parse_direction(where: str, raw: Any, base: DirectionPolicy | None) -> DirectionPolicy:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping of finding type to rule")
    rules = dict(base.rules) if base is not None else {}
    default = base.default if base is not None else Rule(Action.ALLOW)
    for key, value in raw.items():
        kind = str(key)
        if kind == "default":
            default = _parse_rule(f"{where}.default", value, default)
            continue
        if kind != kind.upper():
            raise PolicyError(f"{where}: finding types are upper case, got {kind!r}")
        rule = _parse_rule(f"{where}.{kind}", value, rules.get(kind))
        if kind in MESSAGE_LEVEL_TYPES and rule.action is Action.REDACT:
            raise PolicyError(
                f"{where}.{kind}: a whole-message finding can be allowed or blocked, not redacted"
            )
        rules[kind] = rule
    return DirectionPolicy(rules, default)


def _parse_policy(tenant: str, where: str, raw: Any, base: Policy | None) -> Policy:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    restore = raw.get("restore_redacted", base.restore_redacted if base is not None else True)
    if not isinstance(restore, bool):
        raise PolicyError(f"{where}.restore_redacted: expected true or false")
    roles_raw = raw.get("injection_roles")
    if roles_raw is None:
        roles = base.injection_roles if base is not None else frozenset({"user", "tool"})
    elif isinstance(roles_raw, list) and all(isinstance(r, str) for r in roles_raw):
        roles = frozenset(roles_raw)
    else:
        raise PolicyError(f"{where}.injection_roles: expected a list of role names")
    return Policy(
        tenant=tenant,
        input=_parse_direction(f"{where}.input", raw.get("input"), base.input if base else None),
        output=_parse_direction(f"{where}.output", raw.get("output"), base.output if base else None),
        restore_redacted=restore,
        injection_roles=roles,
    )


class PolicyStore:
    """The default policy and every tenant's effective (merged) policy."""

    def __init__(self, default: Policy, tenants: Mapping[str, Policy]) -> None:
        self._default = default
        self._tenants = dict(tenants)

    @classmethod
    def from_yaml(cls, text: str, injection_threshold: float | None = None) -> PolicyStore:
        """Parse a policy document; `injection_threshold` replaces the default PROMPT_INJECTION threshold."""
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy is not valid YAML: {exc}") from exc
        if not isinstance(doc, Mapping) or set(doc) - {"defaults", "tenants"}:
            raise PolicyError("policy: top level must be a mapping with 'defaults' and 'tenants'")
        default = _parse_policy("", "defaults", doc.get("defaults"), None)
        if injection_threshold is not None:
            rule = default.input.rule("PROMPT_INJECTION")
            rules = {**default.input.rules, "PROMPT_INJECTION": Rule(rule.action, injection_threshold)}
            default = Policy(
                "", DirectionPolicy(rules, default.input.default), default.output,
                default.restore_redacted, default.injection_roles,
            )  # fmt: skip
        tenants_raw = doc.get("tenants") or {}
        if not isinstance(tenants_raw, Mapping):
            raise PolicyError("tenants: expected a mapping of tenant name to overrides")
        tenants = {
            str(name): _parse_policy(str(name), f"tenants.{name}", raw, default)
            for name, raw in tenants_raw.items()
        }
        return cls(default, tenants)

    @classmethod
    def load(cls, path: str | Path, injection_threshold: float | None = None) -> PolicyStore:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"policy file {file} does not exist")
        return cls.from_yaml(file.read_text(encoding="utf-8"), injection_threshold)

    def get(self, tenant: str) -> Policy:
        """The tenant's policy; tenants without overrides get the defaults."""
        policy = self._tenants.get(tenant)
        if policy is not None:
            return policy
        return Policy(
            tenant, self._default.input, self._default.output,
            self._default.restore_redacted, self._default.injection_roles,
        )  # fmt: skip

    @property
    def tenants(self) -> list[str]:
        return sorted(self._tenants)
