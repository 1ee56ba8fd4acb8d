"""Policy: gate 5's limits and the traffic accounts behind caps, credits and usage (pure).

- `ratelimit`: requests per second and concurrent connections per package (`Limiter`, `Slot`).
- `metering`: per-chunk byte accounts, traffic caps and live credits (`Metering`, `Meter`).
- `usage`: hourly usage buckets collected in memory for batched flushes (`UsageBook`).
"""

from exitgate.policy.metering import Meter, Metering, PackageAccount, Traffic
from exitgate.policy.ratelimit import Limiter, Slot
from exitgate.policy.usage import UsageBatch, UsageBook

__all__ = [
    "Limiter",
    "Meter",
    "Metering",
    "PackageAccount",
    "Slot",
    "Traffic",
    "UsageBatch",
    "UsageBook",
]
