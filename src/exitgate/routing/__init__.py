"""Routing: which node serves a request. Re-exports only."""

from exitgate.routing.attempts import (
    MAX_REPLACEMENTS,
    Action,
    Attempts,
    Fail,
    Policy,
    TryNew,
    TrySame,
)
from exitgate.routing.failover import Attempt, Dial, Router, Success
from exitgate.routing.health import BreakerState, HealthPolicy, Lease, NodeHealth
from exitgate.routing.index import NodeIndex
from exitgate.routing.lookalike import Likeness, likeness, lookalike_filters
from exitgate.routing.select import Filters, Load, filters_for, matches, two_choices
from exitgate.routing.sessions import Plan, SessionOutcome, SessionTable, rotation_due

__all__ = [
    "MAX_REPLACEMENTS",
    "Action",
    "Attempt",
    "Attempts",
    "BreakerState",
    "Dial",
    "Fail",
    "Filters",
    "HealthPolicy",
    "Lease",
    "Likeness",
    "Load",
    "NodeHealth",
    "NodeIndex",
    "Plan",
    "Policy",
    "Router",
    "SessionOutcome",
    "SessionTable",
    "Success",
    "TryNew",
    "TrySame",
    "filters_for",
    "likeness",
    "lookalike_filters",
    "matches",
    "rotation_due",
    "two_choices",
]
