"""A real HTTP server on 127.0.0.1 that serves one file, with Range requests, cut-off transfers,
redirects, a body longer than announced, and stalls."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engine.models.downloads import CatalogEntry

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FileServer:
    def __init__(self, payload: bytes = PAYLOAD) -> None:
        self.cut_after: int | None = None  # bytes sent before the connection drops
        self.redirect_to: str | None = None  # answer every request with a 302 to this URL
        self.endless = False  # send the payload again and again, with no Content-Length
        self.stall_after: int | None = None  # body bytes sent before the server goes silent (until `release`)
        self.silent = False  # answer nothing at all, not even the headers (until `release`)
        self.release = threading.Event()
        self.ranges: list[str] = []
        server = self
        served = payload

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                requested = self.headers.get("Range", "")
                server.ranges.append(requested)
                if server.silent:
                    server.release.wait(timeout=60)
                    return
                if server.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if requested.startswith("bytes="):
                    start = int(requested[6:].split("-")[0])
                    if start >= len(served):  # as real servers do: nothing left to send
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(served)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
                else:
                    self.send_response(200)
                body = served[start:]
                if server.endless:
                    self.end_headers()
                    self._endless(body)
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.stall_after is not None:
                    self._send(body[:server.stall_after])
                    server.release.wait(timeout=60)
                    return
                if server.cut_after is not None:
                    self._send(body[:server.cut_after])
                    self.connection.close()
                    server.cut_after = None
                    return
                self._send(body)

            def _endless(self, body: bytes) -> None:
                for _ in range(64):  # 64 MiB at most, however long the client reads
                    self._send(body)

            def _send(self, data: bytes) -> None:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: its right
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.gguf"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def catalog_entry(url: str, sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> CatalogEntry:
    return CatalogEntry("Test model", "model.gguf", url, len(PAYLOAD), sha256, "Apache-2.0")
