"""A loopback HTTP proxy in front of the S3 endpoint that misbehaves on purpose.

It sits at the process boundary (the network), so the uploader under test runs unchanged: rules
fail chosen requests with a 5xx, reset the connection, or hold a request (before or after the store
has seen it) until the test lets it go, so that a test can kill the uploader at an exact point.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Match = Callable[[str, str], bool]  # (method, path?query) -> does the rule apply


def upload_part(method: str, target: str) -> bool:
    return method == "PUT" and "partNumber=" in target


def complete_upload(method: str, target: str) -> bool:
    return method == "POST" and "uploadId=" in target


def put_object(method: str, target: str) -> bool:
    return method == "PUT" and "partNumber=" not in target and "uploadId=" not in target


def get_object(method: str, target: str) -> bool:
    return method == "GET" and "?" not in target


def any_request(method: str, target: str) -> bool:
    return True


@dataclass
class Rule:
    match: Match
    # "fail" (an S3 error reply), "corrupt" (flip a byte of the body), "reset" (close without a reply),
    # "hold" (before forwarding), "hold-reply" (after the store answered), "cut-reply" (half the reply's body)
    action: str
    times: int = 1  # how many matching requests it acts on
    status: int = 503  # what "fail" answers with, and its S3 error code
    code: str = "ServiceUnavailable"
    after: int = 0  # matching requests let through untouched first
    seen: int = 0
    acted: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def applies(self, method: str, target: str) -> bool:
        if not self.match(method, target):
            return False
        self.seen += 1
        if self.seen <= self.after or self.acted >= self.times:
            return False
        self.acted += 1
        return True


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    rule = next((r for r in proxy.rules if r.applies(self.command, self.path)), None)
                if rule is not None and rule.action == "fail":
                    proxy.log.append((self.command, self.path, rule.status))
                    payload = f"<Error><Code>{rule.code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if rule is not None and rule.action == "reset":
                    proxy.log.append((self.command, self.path, 0))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if rule is not None and rule.action == "corrupt" and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]  # a flipped byte the store does not notice
                if rule is not None and rule.action == "hold":
                    rule.reached.set()
                    rule.release.wait(600)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                proxy.log.append((self.command, self.path, reply.status))
                if rule is not None and rule.action == "hold-reply":
                    rule.reached.set()
                    rule.release.wait(600)
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                length_out = reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length_out)
                self.end_headers()
                if rule is not None and rule.action == "cut-reply" and data:
                    self.wfile.write(data[: len(data) // 2])  # headers promised all of it: the body breaks off
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client was killed while we held its request

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        for r in self.rules:
            r.release.set()
        self.server.shutdown()
        self.server.server_close()

    def statuses(self, match: Match, path: str = "") -> list[int]:
        """Statuses of the logged requests ``match`` accepts (and whose target contains ``path``), in order."""
        return [status for method, target, status in self.log if match(method, target) and path in target]
