"""The brute-force defence's runtime side: the throttle built from `[auth]`, and the loop
that logs its aggregated failure summaries (one WARNING per address per interval)."""

from __future__ import annotations

import asyncio
import logging
import time

from exitgate.policy.authguard import AuthThrottle, ThrottlePolicy
from exitgate.settings import AuthSettings

log = logging.getLogger("exitgate.auth")


def throttle_from(settings: AuthSettings) -> AuthThrottle:
    policy = ThrottlePolicy(
        max_failures=settings.max_failures,
        window=settings.window,
        cooldown=settings.cooldown,
        report_every=settings.report_every,
        max_addresses=settings.max_addresses,
    )
    return AuthThrottle(policy, time.monotonic)


def log_reports(throttle: AuthThrottle) -> int:
    """Log the summaries due now; how many."""
    reports = throttle.reports()
    for report in reports:
        log.warning("%s", report.message())
    return len(reports)


async def report_failures(throttle: AuthThrottle) -> None:
    """Forever: log due summaries a few times per interval (so none is late by much)."""
    pause = max(0.05, throttle.policy.report_every / 4)
    while True:
        await asyncio.sleep(pause)
        log_reports(throttle)
