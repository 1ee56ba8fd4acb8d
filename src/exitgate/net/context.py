"""What every per-connection handler needs, built once by the application."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from exitgate.admission import Admission
from exitgate.errors import GatewayError
from exitgate.net.connect import Connector
from exitgate.recorder import Recorder
from exitgate.settings import ExitSettings, ProxySettings

log = logging.getLogger("exitgate.proxy")


@dataclass(slots=True)
class ProxyContext:
    proxy: ProxySettings
    exit: ExitSettings
    admission: Admission
    connector: Connector
    recorder: Recorder

    def rejected(self, err: GatewayError, *, protocol: str, client: str, target: str = "") -> None:
        """Every error, whatever the protocol, lands in the package's recent-errors log."""
        self.recorder.error(err.package_id, err, protocol=protocol, client=client, target=target)
        log.info("%s %s %s: %s %s", protocol, client, target or "-", err.code, err.detail)
