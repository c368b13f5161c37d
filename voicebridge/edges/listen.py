"""The public listening socket, and how several worker processes share one port.

With `reuse_port`, each worker binds the same host:port with SO_REUSEPORT (Linux): the kernel
spreads new connections across the workers' sockets, and a worker that exits takes only its own
queue with it, so the others keep accepting. SO_REUSEADDR is always set (a restart does not wait
for TIME_WAIT sockets).
"""

from __future__ import annotations

import socket

BACKLOG = 1024


class ListenError(Exception):
    """The public socket cannot be opened (address in use, no SO_REUSEPORT here, ...)."""


def open_listener(host: str, port: int, *, reuse_port: bool = False, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when `host` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ListenError("this system has no SO_REUSEPORT: run one worker (VOICEBRIDGE_WORKERS=1)")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def bind_url(sock: socket.socket) -> str:
    """`http://host:port` of a listening socket (brackets around an IPv6 host)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
