"""Port checks for the embedded stack."""

from __future__ import annotations

import socket


class PortInUseError(RuntimeError):
    """A port a service needs is already taken by another process."""

    def __init__(self, service: str, host: str, port: int, env_var: str) -> None:
        self.service, self.host, self.port, self.env_var = service, host, port, env_var
        super().__init__(
            f"port {port} on {host} is already in use, so {service} cannot start there. "
            f"Stop whatever listens on {host}:{port} (e.g. `ss -ltnp 'sport = :{port}'`) "
            f"or choose another port with {env_var}=<port>."
        )


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as the servers themselves set it: connections left in TIME_WAIT by a
        # stack that just stopped do not count, while a live listener still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(service: str, host: str, port: int, env_var: str) -> None:
    """Raise `PortInUseError` naming the port when it is taken."""
    if not port_is_free(host, port):
        raise PortInUseError(service, host, port, env_var)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
