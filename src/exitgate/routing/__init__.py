"""Routing: which node serves a request. Re-exports only."""

from exitgate.routing.index import NodeIndex
from exitgate.routing.select import Filters, Load, filters_for, matches, two_choices

__all__ = ["Filters", "Load", "NodeIndex", "filters_for", "matches", "two_choices"]
