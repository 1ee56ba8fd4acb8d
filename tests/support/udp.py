"""UDP test support: a DNS server that names who asked, a SOCKS5 upstream with UDP ASSOCIATE,
and a PySocks client helper.

`DnsServer` answers every query with one TXT record `"<source ip>:<source port>"` (built with
dnspython's message API), so a test proves which exit the datagram left from.
`Socks5UdpUpstream` is a minimal SOCKS5 proxy (RFC 1928 + 1929) that serves UDP ASSOCIATE
only; its relay socket is bound to `bind`, so the DNS server sees that address.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import socks


class DnsServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.seen: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # junk is ignored, as a real server would
                continue
            self.seen.append((addr[0], addr[1]))
            answer = dns.message.make_response(query)
            name = query.question[0].name
            answer.answer.append(
                dns.rrset.from_text(name, 0, dns.rdataclass.IN, dns.rdatatype.TXT,
                                    f'"{addr[0]}:{addr[1]}"')
            )
            with contextlib.suppress(OSError):
                self.sock.sendto(answer.to_wire(), addr)

    def stop(self) -> None:
        self.sock.close()
        self._thread.join(2)


def txt_of(wire: bytes) -> str:
    """The TXT answer of a DNS response: the source address the server saw."""
    message = dns.message.from_wire(wire)
    return b"".join(message.answer[0][0].strings).decode()


def query(name: str = "exit.test.") -> bytes:
    return dns.message.make_query(name, dns.rdatatype.TXT).to_wire()


def udp_client(
    proxy: tuple[str, int], user: str, key: str, timeout: float = 5.0
) -> socks.socksocket:
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, proxy[0], proxy[1], username=user, password=key)
    sock.settimeout(timeout)
    return sock


def ask(
    sock: socks.socksocket, server: DnsServer, name: str = "exit.test."
) -> tuple[str, int, int]:
    """One DNS query through the association: (source the server saw, bytes sent, received)."""
    wire = query(name)
    sock.sendto(wire, (server.host, server.port))
    data, _ = sock.recvfrom(65535)
    return txt_of(data), len(wire), len(data)


class Socks5UdpUpstream:
    """SOCKS5 with username/password, serving UDP ASSOCIATE (nothing else)."""

    def __init__(self, bind: str, user: str = "up", password: str = "secret") -> None:
        self.bind = bind
        self.user = user.encode()
        self.password = password.encode()
        self.listener = socket.create_server((bind, 0))
        self.port = self.listener.getsockname()[1]
        self.associations = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"socks5://{self.user.decode()}:{self.password.decode()}@{self.bind}:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                head = _read(conn, 2)
                _read(conn, head[1])
                conn.sendall(b"\x05\x02")
                ver_ulen = _read(conn, 2)
                user = _read(conn, ver_ulen[1])
                password = _read(conn, _read(conn, 1)[0])
                if user != self.user or password != self.password:
                    conn.sendall(b"\x01\x01")
                    return
                conn.sendall(b"\x01\x00")
                _, cmd, _, atyp = _read(conn, 4)
                _read(conn, {1: 4, 4: 16}.get(atyp, 0) or _read(conn, 1)[0])
                _read(conn, 2)
                if cmd != 3:
                    conn.sendall(b"\x05\x07\x00\x01" + bytes(6))
                    return
                relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                relay.bind((self.bind, 0))
                host, port = relay.getsockname()[:2]
                conn.sendall(b"\x05\x00\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
                self.associations += 1
                pump = threading.Thread(target=self._relay, args=(relay, conn.getpeername()[0]),
                                        daemon=True)
                pump.start()
                conn.settimeout(None)
                while conn.recv(4096):
                    pass
                relay.close()
            except (OSError, IndexError):
                return

    @staticmethod
    def _relay(relay: socket.socket, client_ip: str) -> None:
        client: tuple[str, int] | None = None
        while True:
            try:
                data, addr = relay.recvfrom(65535)
            except OSError:
                return
            if client is None and addr[0] == client_ip and data[:3] == b"\x00\x00\x00":
                client = addr
            if addr == client:
                if data[3] != 1:
                    continue  # the test upstream only relays to IPv4 literals
                target = socket.inet_ntoa(data[4:8]), struct.unpack("!H", data[8:10])[0]
                with contextlib.suppress(OSError):
                    relay.sendto(data[10:], target)
            elif client is not None:
                source = socket.inet_aton(addr[0]) + struct.pack("!H", addr[1])
                header = b"\x00\x00\x00\x01" + source
                with contextlib.suppress(OSError):
                    relay.sendto(header + data, client)

    def stop(self) -> None:
        self._stop = True
        self.listener.close()


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data
