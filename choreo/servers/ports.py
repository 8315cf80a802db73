"""Free loopback TCP ports for servers started as child processes."""

import random
import socket
import threading

# A port is only known to be free at the moment we probe it; the server binds it later. Never
# handing the same port out twice in one process stops two servers built before either starts
# (or one server's HTTP port and another's gRPC port at +offset) from being given the same one.
_handed_out: set[int] = set()
_lock = threading.Lock()

# SeaweedFS needs port+offset free as well, so the kernel's choice (port 0) cannot be used: it
# says nothing about the second port. Random picks in a fixed range, checked by binding both.
_RANGE_LOW = 20000
_RANGE_HIGH = 55000
_ATTEMPTS = 500


def free_port(host: str = "127.0.0.1", *, grpc_offset: int | None = None) -> int:
    """Return a TCP port on `host` that is free now (and, with `grpc_offset`, port+offset too)."""
    with _lock:
        if grpc_offset is None:
            for _ in range(_ATTEMPTS):
                port = _kernel_port(host)
                if port not in _handed_out:
                    _handed_out.add(port)
                    return port
        else:
            high = min(_RANGE_HIGH, 65535 - grpc_offset)
            if high < _RANGE_LOW:
                raise ValueError(f"grpc_offset={grpc_offset} leaves no room below port 65535")
            for _ in range(_ATTEMPTS):
                port = random.randint(_RANGE_LOW, high)  # noqa: S311 - not a secret
                pair = (port, port + grpc_offset)
                if _handed_out.isdisjoint(pair) and all(_bindable(host, p) for p in pair):
                    _handed_out.update(pair)
                    return port
    raise RuntimeError(
        f"no free TCP port found on {host} after {_ATTEMPTS} attempts: "
        "close some listening servers or pass explicit ports"
    )


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
