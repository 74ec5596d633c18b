"""Listening on the endpoint's port, alone or beside the release a blue/green replace takes over from.

Linux-only steering (a classic BPF program on the SO_REUSEPORT group) makes the handover lose no
connection; ``bench/reuseport_handover.py`` measures what it saves against SO_REUSEPORT alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux; not in Python's socket module


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    try:
        sock = socket.create_server((host, port), backlog=1024, reuse_port=reuse_port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}): is another server "
                                 "running there? pick another --port") from None
    sock.setblocking(False)
    return sock


def take_over(host: str, port: int) -> socket.socket:
    """Listen on a port the release being replaced still serves, and draw every new connection here.

    Both listeners carry SO_REUSEPORT, so this one can bind while the old one serves. The kernel
    would spread new connections over both, and when the old one closes its listener, connections
    waiting in its accept queue are reset. So a classic BPF program (``return 1``) is attached to the
    port's group: the group lists its sockets in bind order, the old release is 0 and this one 1, so
    every new connection comes here and the old listener has nothing queued when it closes. The
    program stays with the group; once the old socket is gone, index 1 is out of range and the
    kernel falls back to its hash over the one socket left, until the next successor joins as 1.
    Without the program (not Linux), the switch still works, with that small reset window.
    """
    sock = bind(host, port, reuse_port=True)
    program = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 1), 8)  # BPF_RET|BPF_K, k=1
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        struct.pack("HP", 1, ctypes.addressof(program)))  # struct sock_fprog
    return sock
