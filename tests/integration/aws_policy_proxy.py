"""An HTTP proxy in front of the real store that answers as AWS S3 does for an identity whose
`s3:ListBucket` is granted only under prefixes (an `s3:prefix` StringLike condition, the
README's least-privilege bucket policy). SeaweedFS cannot express that condition, so the
three answers AWS gives differently are made here, from AWS's documented rules, and every
other request goes to the real store unchanged (signed headers and all):

- HeadBucket carries no prefix: 403.
- A ListObjects whose `prefix` no pattern matches: 403.
- HEAD or GET of a key that does not exist: 403, not 404 (S3 answers 404 only to a
  requester allowed to list the bucket, and this request has no prefix either).
"""

from __future__ import annotations

import fnmatch
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tools.seaweed import free_port

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b'<Message>Access Denied</Message></Error>')


class AwsPolicyProxy:
    def __init__(self, upstream_port: int, list_prefixes: list[str]):
        self.upstream_port = upstream_port
        self.list_prefixes = list_prefixes  # StringLike patterns, e.g. "models/m/*"
        self.port = free_port()
        self.denied: list[str] = []  # what was refused, for the test to look at
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, headers: list[tuple[str, str]],
                        body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "content-length",
                                            "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _deny(self, why: str) -> None:
                proxy.denied.append(f"{self.command} {self.path} ({why})")
                self._answer(403, [("Content-Type", "application/xml")], DENIED)

            def _forward(self) -> None:
                url = urlsplit(self.path)
                parts = url.path.lstrip("/").split("/", 1)
                query = parse_qs(url.query, keep_blank_values=True)
                is_bucket = len(parts) == 1 or parts[1] == ""
                if is_bucket and self.command == "HEAD":
                    return self._deny("HeadBucket has no s3:prefix")
                if is_bucket and self.command == "GET" and "list-type" in query or \
                        is_bucket and self.command == "GET" and "prefix" in query:
                    prefix = query.get("prefix", [""])[0]
                    if not any(fnmatch.fnmatchcase(prefix, p) for p in proxy.list_prefixes):
                        return self._deny(f"s3:prefix {prefix!r} not granted")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port,
                                                      timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body,
                                     headers=dict(self.headers.items()))
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                if response.status == 404 and not is_bucket and \
                        self.command in ("GET", "HEAD"):
                    return self._deny("a missing key, without unconditional ListBucket")
                self._answer(response.status, response.getheaders(), data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AwsPolicyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
