"""The JSON shapes of structured column values (`packages.autoban`), so sql.py stays a list
of columns."""

from __future__ import annotations

from typing import Any

from exitgate.model import AutoBan


def autoban_to(autoban: AutoBan | None) -> dict[str, Any] | None:
    if autoban is None:
        return None
    return {"statuses": sorted(autoban.statuses), "ttl": autoban.ttl}


def autoban_from(value: Any) -> AutoBan | None:
    if not value:
        return None
    return AutoBan(frozenset(int(s) for s in value["statuses"]), int(value["ttl"]))
