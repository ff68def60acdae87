"""Local TCP ports: what the server, its tests and the serving benchmark ask of the network stack."""

from __future__ import annotations

import socket

#: The loopback address: where ``mmcls serve`` listens by default and where its internal port listens.
LOOPBACK = "127.0.0.1"


def free_ports(count: int = 1, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now (all bound at once, so none repeats).

    Free when asked, not reserved: another process may take one before it is used, which is why a server
    started on them still checks its ports.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
