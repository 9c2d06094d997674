"""Erasure policy on data categories: the masking strategy of each field, what is retained and why.

How a field's strategy is chosen, first match wins:

1. ``fides_meta.masking_strategy_override`` on the field (the dataset's word is final);
2. the policy rule whose ``categories`` match the field's data categories most
   specifically (fideslang categories are hierarchical: ``user.contact`` matches
   ``user.contact.email``; the longest matching prefix wins). Rules scoped to
   ``collections`` beat unscoped ones; a rule with ``collections`` and no
   ``categories`` applies to every ``user.*`` field of those collections;
3. ``default_strategy`` for any field with a ``user`` (or ``user.*``) category;
4. otherwise the field is left alone (for example ``system.operations``).

Primary-key and read-only fields are never masked (but ``delete_row`` on them deletes
the row). A row is deleted when any of its fields' strategy is ``delete_row`` or the
dataset sets ``masking_strategy_override: {strategy: delete}`` on the collection.

Retention (``[[policy.retain]]``, a legal ground is required):

- ``collection = "orders"``: the whole row is kept: ``PlanItem(action="retain")``;
- ``categories = [...]`` (optionally with ``collection`` to scope it): matching fields
  are kept and the row's other fields are still masked: ``PlanItem(action="update",
  ground=..., retained_fields=[...])``; when no field is left to mask the item is
  ``retain`` with ``retained_fields``. A kept field prevents ``delete_row``: the
  fields that asked for it are nulled instead.

A row also reachable from another data subject is kept whole with the ground
:data:`SHARED_GROUND`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fideslang.default_taxonomy import DEFAULT_TAXONOMY
from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.contract import ConfigurationError, PlanItem, RetainedItem
from connectors.fides import CollectionSpec, DatasetGraph, FieldSpec
from connectors.values import jsonable, text_param

Group = tuple[str, str, tuple[str, ...], tuple[str, ...]]
"""Plan items that share one statement: (collection, action, assigned columns, key columns)."""
SHARED_GROUND = "shared with another data subject"
"""The ground recorded for a row that another data subject's identity also reaches."""

Strategy = Literal["null_rewrite", "string_rewrite", "hash", "delete_row"]
TEXT_STRATEGIES: frozenset[str] = frozenset({"string_rewrite", "hash"})
"""Strategies that write text, so the column must hold text."""
_OVERRIDE_NAMES: dict[str, Strategy] = {
    "null_rewrite": "null_rewrite",
    "string_rewrite": "string_rewrite",
    "hash": "hash",
    "hmac": "hash",
    "delete_row": "delete_row",
    "delete": "delete_row",
}


class MaskingRule(BaseModel):
    """``[[policy.rules]]``: a strategy for fields of some data categories (and/or collections)."""

    model_config = ConfigDict(extra="forbid")

    categories: list[str] = Field(default_factory=list, description="Data categories (hierarchical).")
    collections: list[str] = Field(default_factory=list, description="Limit the rule to these collections.")
    strategy: Strategy
    rewrite_value: str | None = Field(default=None, description="For string_rewrite; 'MASKED' when absent.")

    @model_validator(mode="after")
    def _scoped(self) -> MaskingRule:
        if not self.categories and not self.collections:
            raise ValueError("a rule needs categories or collections")
        return self


class RetentionRule(BaseModel):
    """``[[policy.retain]]``: data kept on purpose, with its legal ground."""

    model_config = ConfigDict(extra="forbid")

    collection: str | None = Field(default=None, description="Keep whole rows of this collection.")
    categories: list[str] = Field(default_factory=list, description="Keep fields of these data categories.")
    ground: str = Field(min_length=1, description="Why, e.g. 'Tax law: invoices kept 10 years'.")

    @model_validator(mode="after")
    def _scoped(self) -> RetentionRule:
        if not self.collection and not self.categories:
            raise ValueError("a retention rule needs a collection or categories")
        return self


class PolicyConfig(BaseModel):
    """``[policy]``: the erasure policy of one system."""

    model_config = ConfigDict(extra="forbid")

    default_strategy: Strategy = Field(
        default="null_rewrite", description="For any field under 'user' that no rule matches."
    )
    rules: list[MaskingRule] = Field(default_factory=list)
    retain: list[RetentionRule] = Field(default_factory=list)


def category_depth(rule_category: str, category: str) -> int:
    """How specifically ``rule_category`` matches ``category``: its number of segments, or -1."""
    if category == rule_category or category.startswith(rule_category + "."):
        return rule_category.count(".") + 1
    return -1


def is_personal(spec: FieldSpec) -> bool:
    """Whether the field carries a ``user`` data category."""
    return any(category_depth("user", c) >= 0 for c in spec.categories)


@dataclass(frozen=True)
class Masker:
    """One field's masking strategy, ready to apply to original values."""

    strategy: Strategy
    rewrite_value: str = "MASKED"
    suffix: str = ""
    secret: bytes | None = field(default=None, repr=False)

    def apply(self, value: Any) -> str | None:
        """The masked value of an original ``value`` (NULL stays NULL: it holds nothing)."""
        if value is None or self.strategy in ("null_rewrite", "delete_row"):
            return None
        if self.strategy == "string_rewrite":
            return self.rewrite_value + self.suffix
        text = value if isinstance(value, str) else str(jsonable(value))
        assert self.secret is not None
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest() + self.suffix

    @property
    def constant(self) -> bool:
        """Whether every non-NULL value gets the same masked value (so that a range of rows can share it)."""
        return self.strategy != "hash"

    @property
    def output_length(self) -> int:
        """Length of the text this masker writes (0 for NULL)."""
        if self.strategy == "string_rewrite":
            return len(self.rewrite_value + self.suffix)
        return 64 + len(self.suffix) if self.strategy == "hash" else 0


@dataclass
class CollectionPolicy:
    """The decided policy of one collection."""

    name: str
    primary_key: tuple[str, ...]
    delete: bool = False
    maskers: dict[str, Masker] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    """Fields retained by category, with their ground."""
    ground: str | None = None
    """Ground of retaining the whole collection."""

    @property
    def acts(self) -> bool:
        """Whether erasure has anything to do (or to report) in this collection."""
        return self.delete or bool(self.maskers) or bool(self.kept)

    def decide(self, row: Mapping[str, Any], *, shared: bool) -> PlanItem | None:
        """The plan item for one row, from its original values (None when there is nothing to do)."""
        if not self.acts:
            return None
        key = {k: jsonable(row[k]) for k in self.primary_key}
        item = PlanItem(collection=self.name, key=key, action="retain")
        if self.ground or shared:
            item.ground = self.ground or SHARED_GROUND
            return item
        if self.delete:
            item.action = "delete"
            return item
        item.ground = "; ".join(sorted(set(self.kept.values()))) or None
        item.retained_fields = sorted(self.kept)
        if self.maskers:
            item.action = "update"
            item.assignments = {f: m.apply(row.get(f)) for f, m in self.maskers.items()}
        return item

    def decide_range(self) -> PlanItem | None:
        """The change every row of the subject gets alike, when it depends on no row: deletion, or constants.

        None when some row's change depends on its values (a hash) or when rows are kept
        (whole or some fields, with a ground): those keep one plan item per row. The item
        has no key; the connector sets its ``key_range``.
        """
        if not self.acts or self.ground or self.kept:
            return None
        if self.delete:
            return PlanItem(collection=self.name, action="delete")
        if not all(m.constant for m in self.maskers.values()):
            return None
        return PlanItem(collection=self.name, action="update",
                        assignments={f: m.apply("") for f, m in self.maskers.items()})


class ErasurePolicy:
    """The policy applied to a dataset: a :class:`CollectionPolicy` per collection."""

    def __init__(
        self,
        graph: DatasetGraph,
        config: PolicyConfig,
        *,
        hash_secret: bytes | None,
        secret_hint: str = "hash_secret_env is not set",  # noqa: S107 - a message, not a secret
        primary_keys: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Decide every collection's policy.

        Args:
            graph: The dataset.
            config: The policy options.
            hash_secret: The HMAC secret for the hash strategy, if configured.
            secret_hint: Why the secret is missing, for the error message.
            primary_keys: Primary keys by collection where the dataset declares none (from the database).

        Raises:
            ConfigurationError: Unknown category or collection, unknown override, hash without a secret.
        """
        self._graph, self._config = graph, config
        self._secret, self._secret_hint = hash_secret, secret_hint
        known = graph.categories() | {c.fides_key for c in DEFAULT_TAXONOMY.data_category}
        for rule in [*config.rules, *config.retain]:
            for cat in rule.categories:
                if cat not in known:
                    raise ConfigurationError(f"policy: unknown data category {cat!r}")
            scope = rule.collections if isinstance(rule, MaskingRule) else [rule.collection or ""]
            for name in scope:
                if name and name not in graph.collections:
                    raise ConfigurationError(f"policy: unknown collection {name!r}")
        primary_keys = primary_keys or {}
        self.collections: dict[str, CollectionPolicy] = {
            name: self._decide(spec, spec.primary_key or primary_keys.get(name, ()))
            for name, spec in graph.collections.items()
        }

    def _decide(self, spec: CollectionSpec, primary_key: tuple[str, ...]) -> CollectionPolicy:
        policy = CollectionPolicy(name=spec.name, primary_key=primary_key, delete=spec.delete_rows)
        policy.ground = next(
            (r.ground for r in self._config.retain if r.collection == spec.name and not r.categories), None
        )
        deleters: list[str] = []
        for fld in spec.fields.values():
            masker = self._masker(spec.name, fld)
            if masker is None:
                continue
            protected = fld.name in primary_key or fld.read_only
            ground = None if protected else self._kept(spec.name, fld)
            if ground:
                policy.kept[fld.name] = ground
            elif masker.strategy == "delete_row":
                policy.delete = True
                if not protected:
                    deleters.append(fld.name)
            elif not protected:
                policy.maskers[fld.name] = masker
        if policy.delete and policy.kept:  # keeping some fields forbids deleting the row
            policy.delete = False
            policy.maskers.update({f: Masker("null_rewrite") for f in deleters})
        return policy

    def _kept(self, collection: str, fld: FieldSpec) -> str | None:
        for rule in self._config.retain:
            if rule.collection not in (None, collection):
                continue
            if any(category_depth(rc, c) >= 0 for rc in rule.categories for c in fld.categories):
                return rule.ground
        return None

    def _masker(self, collection: str, fld: FieldSpec) -> Masker | None:
        if fld.override:
            return self._override(collection, fld)
        best: MaskingRule | None = None
        best_rank = (False, -1)
        for rule in self._config.rules:
            if rule.collections and collection not in rule.collections:
                continue
            if rule.categories:
                depth = max(category_depth(rc, c) for rc in rule.categories for c in (*fld.categories, ""))
            else:
                depth = 0 if is_personal(fld) else -1
            rank = (bool(rule.collections), depth)
            if depth >= 0 and rank > best_rank:
                best, best_rank = rule, rank
        if best is not None:
            return self._make(collection, fld, best.strategy, best.rewrite_value or "MASKED", "")
        if is_personal(fld):
            return self._make(collection, fld, self._config.default_strategy, "MASKED", "")
        return None

    def _override(self, collection: str, fld: FieldSpec) -> Masker:
        assert fld.override is not None
        name = str(fld.override.get("strategy"))
        conf = fld.override.get("configuration") or {}
        strategy = _OVERRIDE_NAMES.get(name)
        if strategy is None:
            raise ConfigurationError(
                f"{collection}.{fld.name}: masking_strategy_override {name!r} is not supported "
                f"(use one of {', '.join(sorted(_OVERRIDE_NAMES))})"
            )
        suffix = str((conf.get("format_preservation") or {}).get("suffix") or "")
        return self._make(collection, fld, strategy, str(conf.get("rewrite_value", "MASKED")), suffix)

    def _make(self, collection: str, fld: FieldSpec, strategy: Strategy, rewrite: str, suffix: str) -> Masker:
        protected = fld.primary_key or fld.read_only
        if strategy == "hash" and self._secret is None and not protected:
            hint = self._secret_hint
            raise ConfigurationError(f"{collection}.{fld.name} uses the hash strategy, but {hint}")
        return Masker(strategy, rewrite, suffix, self._secret if strategy == "hash" else None)


def secret_bytes(value: str) -> bytes:
    """The HMAC key from its environment value: ``base64:...`` is decoded, anything else is UTF-8."""
    if value.startswith("base64:"):
        return base64.b64decode(value.removeprefix("base64:"))
    return value.encode()


class Tally:
    """Counts over plan items: rows masked and deleted per collection, and what is retained and why."""

    def __init__(self) -> None:
        """Start at zero."""
        self.masked: Counter[str] = Counter()
        self.deleted: Counter[str] = Counter()
        self._kept: Counter[tuple[str, str, tuple[str, ...]]] = Counter()

    def add(self, item: PlanItem) -> None:
        """Count one item's rows (an update with a ground counts as masked and as retained fields)."""
        if item.action == "update":
            self.masked[item.collection] += item.rows
        elif item.action == "delete":
            self.deleted[item.collection] += item.rows
        if item.ground:
            self._kept[(item.collection, item.ground, tuple(item.retained_fields))] += item.rows

    @property
    def retained(self) -> list[RetainedItem]:
        """Retained rows grouped by collection, ground and fields kept."""
        return [RetainedItem(collection=c, count=n, ground=g, fields=list(f))
                for (c, g, f), n in self._kept.items()]


def statements(items: Iterable[PlanItem]) -> dict[Group, list[list[str | None]]]:
    """Non-retain row items grouped by statement shape, each as its text parameters (assignments, then key).

    Range items (``key_range`` set) are not rows: they are left out.
    """
    groups: dict[Group, list[list[str | None]]] = {}
    for item in items:
        if item.action == "retain" or item.key_range is not None:
            continue
        cols = tuple(item.assignments) if item.action == "update" else ()
        groups.setdefault((item.collection, item.action, cols, tuple(item.key)), []).append(
            [text_param(item.assignments[c]) for c in cols] + [text_param(v) for v in item.key.values()])
    return groups
