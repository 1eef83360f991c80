"""A real HTTP server on 127.0.0.1 that serves one file, with Range requests and cut-off transfers."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engine.models.downloads import CatalogEntry

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FileServer:
    def __init__(self, payload: bytes = PAYLOAD) -> None:
        self.cut_after: int | None = None  # bytes sent before the connection drops
        self.ranges: list[str] = []
        server = self
        served = payload

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                requested = self.headers.get("Range", "")
                server.ranges.append(requested)
                if requested.startswith("bytes="):
                    start = int(requested[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
                else:
                    self.send_response(200)
                body = served[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[:server.cut_after])
                    self.wfile.flush()
                    self.connection.close()
                    server.cut_after = None
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.gguf"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def catalog_entry(url: str, sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> CatalogEntry:
    return CatalogEntry("Test model", "model.gguf", url, len(PAYLOAD), sha256, "Apache-2.0")
