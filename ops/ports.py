"""What the commands that start a web server check first."""

import socket

from django.core.management.base import CommandError


def refuse_taken_port(host: str, port: int) -> None:
    """Stop with one clear line, before anything starts, when another program listens on the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise CommandError(
                f"Port {port} on {host} is already in use: stop what listens there, or choose another port "
                f"(PORT={port + 1}, e.g. make run PORT={port + 1})."
            ) from None
