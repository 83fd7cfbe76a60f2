"""A real HTTP receiver on 127.0.0.1 (a threaded http.server on a free port) and an endpoint pointing at it."""

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from booking_site.webhooks import services


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """Answers each POST with ``answer(received) -> (status, headers)`` (200 by default) and keeps it."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], tuple[int, dict[str, str]]] = lambda received: (200, {})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = True  # it listens on 127.0.0.1
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # no 40 ms delayed-ACK wait between the headers and the body
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
            with state.lock:
                state.received.append(received)
            status, headers = state.answer(received)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            with contextlib.suppress(OSError):  # the sender gave up (its timeout) or was killed
                self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint(receiver, db):
    return services.webhook_endpoint_create(url=receiver.url, description="test receiver", now=timezone.now())
