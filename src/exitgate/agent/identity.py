"""Who the agent says it is: its stable id and its attributes (flags, else learned).

- The id is `--id`, else the one kept in a state file (created with a random id on first run),
  so a restarted agent comes back as the same node with the same sessions and history.
- Several agents on one host (a mobile farm: one per modem) must not share that file, or they
  would claim one id. `claim_agent_id` takes the first state-file *slot* no running agent holds:
  each agent keeps an exclusive `flock` on its slot file for its lifetime (`agent-id`,
  `agent-id.2`, ...; with `--bind`, slots are per address: `agent-id@192.0.2.7`). A restarted
  agent finds its slot free again and comes back with its id; the lock dies with the process.
- Attributes given as flags must already be rule values (`check_attrs`, the hub's own check):
  `--city "New York"` is refused with a hint (`new_york`), never silently rewritten.
- Missing ones are learned from the checker (`GET /api/ipinfo` of `exitgate checker`), asked
  from the agent's `--bind` address so the answer describes the address targets will see:
  the public `ip`, and country, region, city, ISP (the carrier when no ISP is named; a carrier
  makes the network `mob` unless `--network` says otherwise). Learned names are normalised
  (`New York` → `new_york`); a learned value that still fails the check is dropped with a
  warning rather than stopping the agent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exitgate.hub.protocol import ID_RE, check_attrs, check_ip
from exitgate.model import Network, NodeAttrs

log = logging.getLogger("exitgate.agent")


@dataclass(frozen=True, slots=True)
class Flags:
    """Attribute flags as given; "" (or None for asn) when absent."""

    country: str = ""
    region: str = ""
    city: str = ""
    isp: str = ""
    asn: int | None = None
    network: str = ""


@dataclass(frozen=True, slots=True)
class Learned:
    ip: str = ""
    country: str = ""
    region: str = ""
    city: str = ""
    isp: str = ""
    carrier: str = ""


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "exitgate" / "agent-id"


def agent_id(given: str, state_file: Path) -> str:
    """`given` when set (validated); else the id kept in `state_file`, made on first use."""
    if given:
        if not ID_RE.fullmatch(given):
            raise ValueError("--id must be 1-64 characters of A-Z a-z 0-9 _ . - ")
        return given
    try:
        stored = state_file.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if stored and ID_RE.fullmatch(stored):
        return stored
    new = "agent-" + secrets.token_hex(6)
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new + "\n")
    except OSError as exc:
        log.warning("cannot keep the agent id in %s (%s): it changes on restart", state_file, exc)
    return new


MAX_SLOTS = 4096
_HELD: list[int] = []  # slot locks, held for the life of the process


def claim_agent_id(given: str, state_file: Path, bind: str = "") -> str:
    """`agent_id` over the first state-file slot no other running agent holds (locked now)."""
    if given:
        return agent_id(given, state_file)
    base = state_file.with_name(f"{state_file.name}@{bind}") if bind else state_file
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return agent_id("", base)  # agent_id warns that the id will not survive a restart
    for slot in range(1, MAX_SLOTS + 1):
        path = base if slot == 1 else base.with_name(f"{base.name}.{slot}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return agent_id("", path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _HELD.append(fd)
        if slot > 1:
            log.info("state file %s is held by another agent: using %s", base, path)
        return agent_id("", path)
    raise ValueError(f"every state-file slot of {base} is in use; give this agent --id")


def normalise(text: str) -> str:
    """`New York` → `new_york`: ASCII lowercase, accents dropped, other runs → `_`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def check_flags(flags: Flags) -> None:
    """ValueError naming the flag when a given value is not a rule value."""
    try:
        check_attrs(
            country=flags.country, region=flags.region, city=flags.city, isp=flags.isp,
            asn=flags.asn or 0, network=flags.network or Network.RES.value,
        )
    except ValueError as exc:
        message = str(exc)
        field = message.split(" ", 1)[0]
        value = getattr(flags, field, "")
        hint = ""
        if isinstance(value, str) and value and field in ("region", "city", "isp", "country"):
            fixed = normalise(value)
            if fixed and fixed != value:
                hint = f"; did you mean {fixed}?"
        raise ValueError(f"--{field}: {message}{hint}") from None


def merge(flags: Flags, learned: Learned | None) -> NodeAttrs:
    """Flags win; learned values fill the gaps when they pass the check."""
    got = learned or Learned()
    picked: dict[str, Any] = {
        "country": flags.country or got.country.lower(),
        "region": flags.region or normalise(got.region),
        "city": flags.city or normalise(got.city),
        "isp": flags.isp or normalise(got.isp or got.carrier),
        "asn": flags.asn or 0,
        "network": flags.network or (Network.MOB.value if got.carrier else Network.RES.value),
    }
    attrs = check_attrs(**_defaults())
    for name, value in picked.items():
        try:
            attrs = check_attrs(**(_as_dict(attrs) | {name: value}))
        except ValueError as exc:
            log.warning("ignoring learned %s: %s", name, exc)
    return attrs


def _defaults() -> dict[str, Any]:
    return {"country": "", "region": "", "city": "", "isp": "", "asn": 0, "network": "res"}


def _as_dict(attrs: NodeAttrs) -> dict[str, Any]:
    return {
        "country": attrs.country, "region": attrs.region, "city": attrs.city, "isp": attrs.isp,
        "asn": attrs.asn, "network": attrs.network.value,
    }


def parse_ipinfo(body: Any) -> Learned:
    """The checker's JSON answer → Learned; ValueError when it is not one."""
    if not isinstance(body, dict) or body.get("status") is not True:
        raise ValueError("checker did not answer with status true")
    data = body.get("data")
    if not isinstance(data, dict):
        raise ValueError("checker answer has no data")

    def text(name: str) -> str:
        value = data.get(name, "")
        return value if isinstance(value, str) else ""

    return Learned(
        ip=check_ip(text("ip")),
        country=text("country_code"),
        region=text("region"),
        city=text("city"),
        isp=text("isp"),
        carrier=text("carrier"),
    )


async def learn(url: str, bind: str, wait: float = 5.0, verify: bool = True) -> Learned:
    """Ask the checker at `url` (from `bind`) who we are. ValueError/OSError on failure."""
    import httpx  # only agents with --checker pay for the import

    if not url.rstrip("/").endswith("/api/ipinfo"):
        url = url.rstrip("/") + "/api/ipinfo"
    transport = httpx.AsyncHTTPTransport(local_address=bind or None, verify=verify)
    async with httpx.AsyncClient(transport=transport, timeout=wait, trust_env=False) as client:
        try:
            answer = await client.get(url)
            answer.raise_for_status()
            return parse_ipinfo(answer.json())
        except httpx.HTTPError as exc:
            raise OSError(f"checker {url}: {exc}") from None


def with_ip(learned: Learned | None, bind: str) -> str:
    """The public address to report: the checker's answer, else the bind address."""
    if learned is not None and learned.ip:
        return learned.ip
    return bind

