"""The last route of the fallback hierarchy: configured rules, or a default score.

A rule is ``<feature><op><value>:<score>`` (op one of ``>``, ``>=``, ``<``, ``<=``), e.g.
``amount>2000:0.9``. The score of a vector is the highest score of the rules it matches,
else the default. Rules see features by name (the vector's ``names``, or the input names
of a model trained on its feature set); a rule naming an absent feature never matches.

>>> rules = RulesScorer.from_config(["amount>1000:0.9", "foreign>=1:0.6"], default_score=0.05)
>>> rules.score({"amount": 1500.0, "foreign": 0.0})
0.9
>>> rules.score({"amount": 10.0})
0.05
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from streamml.errors import ConfigError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_RULE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*:\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Rule:
    feature: str
    op: str
    value: float
    score: float

    def matches(self, features: Mapping[str, float]) -> bool:
        found = features.get(self.feature)
        return found is not None and _OPS[self.op](found, self.value)


class RulesScorer:
    """Scores without a model: never fails, so the hierarchy always ends with an answer."""

    name = "rules"

    def __init__(self, rules: Sequence[Rule], *, default_score: float, threshold: float) -> None:
        if not 0.0 <= default_score <= 1.0 or not 0.0 <= threshold <= 1.0:
            raise ConfigError("rules default score and threshold must be in [0, 1]")
        self.rules = tuple(rules)
        self.default_score = default_score
        self.threshold = threshold
        config = ";".join(f"{r.feature}{r.op}{r.value}:{r.score}" for r in self.rules)
        fingerprint = hashlib.sha256(f"{config}|{default_score}|{threshold}".encode()).hexdigest()
        self.version = f"rules-{fingerprint[:8]}"
        """Identifies the configuration, so predictions say which rules made them."""

    @classmethod
    def from_config(
        cls, rules: Sequence[str], *, default_score: float = 0.0, threshold: float = 0.5
    ) -> RulesScorer:
        parsed = []
        for text in rules:
            match = _RULE.match(text)
            if match is None:
                raise ConfigError(
                    f"rule {text!r} is not <feature><op><value>:<score>, e.g. amount>1000:0.9"
                )
            feature, op, value, score = match.groups()
            try:
                rule = Rule(feature, op, float(value), float(score))
            except ValueError as exc:
                raise ConfigError(f"rule {text!r}: {exc}") from exc
            if not 0.0 <= rule.score <= 1.0:
                raise ConfigError(f"rule {text!r}: score must be in [0, 1]")
            parsed.append(rule)
        return cls(parsed, default_score=default_score, threshold=threshold)

    def score(self, features: Mapping[str, float]) -> float:
        best = None
        for rule in self.rules:
            if rule.matches(features) and (best is None or rule.score > best):
                best = rule.score
        return self.default_score if best is None else best
