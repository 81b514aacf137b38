"""A loopback HTTP server speaking the Hugging Face Hub's file protocol (HEAD/GET .../resolve/REV/PATH).

Lets the real huggingface_hub client run PartID's download code end to end without a network.
`corrupt` serves bytes that do not match the advertised digest, as a damaged mirror would.
"""
from __future__ import annotations

import hashlib
import http.server
import socketserver
import threading


class FakeHub:
    def __init__(self, files: dict[tuple[str, str], bytes], commit: str = "c0ffee" * 6 + "c0ff",
                 corrupt: bool = False):
        self.files, self.commit, self.corrupt = files, commit, corrupt
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self):
                parts = self.path.split("?")[0].lstrip("/").split("/")
                i = parts.index("resolve")
                return hub.files.get(("/".join(parts[:i]), "/".join(parts[i + 2:])))

            def _reply(self, with_body: bool):
                hub.requests.append((self.command, self.path))
                body = self._body()
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                sent = body[:-1] + bytes([body[-1] ^ 1]) if hub.corrupt else body
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", '"%s"' % hashlib.sha256(body).hexdigest())
                self.send_header("Content-Length", str(len(sent)))
                self.end_headers()
                if with_body:
                    self.wfile.write(sent)

            def do_HEAD(self):
                self._reply(False)

            def do_GET(self):
                self._reply(True)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
