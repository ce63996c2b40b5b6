"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub 2.4's create_repo and
upload_folder call on its plain-HTTP path (hf_xet disabled), recording what arrives.

    POST /api/repos/create                        -> {"url": ...}
    POST /api/validate-yaml                       -> {}            (README.md's metadata check)
    POST /api/models/<repo>/preupload/<revision>  -> every file "regular" (sent inline in the commit)
    POST /api/models/<repo>/commit/<revision>     <- NDJSON: a header, then files, base64

Anything else is answered 404 and recorded in `unknown`, so a test sees a client that asks for
more than this stub knows. The LFS and Xet transfer paths are not served: the stub says every
file is "regular", as the Hub does for small text files.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)  # method, path, authorization, body
    created: list[dict[str, Any]] = field(default_factory=list)
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"repo", "header", "files": {path: bytes}}
    unknown: list[str] = field(default_factory=list)


def _handler(seen: Seen, base: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            return None

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:
            seen.requests.append({"method": "GET", "path": self.path, "authorization": self.headers.get("Authorization"),
                                  "body": b""})
            seen.unknown.append(f"GET {self.path}")
            self._reply(404, {"error": "not served by the stub"})

        def do_POST(self) -> None:
            body = self._body()
            path = self.path.split("?")[0]
            seen.requests.append({"method": "POST", "path": self.path, "authorization": self.headers.get("Authorization"),
                                  "body": body})
            if path == "/api/repos/create":
                payload = json.loads(body)
                seen.created.append(payload)
                name = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                return self._reply(200, {"url": f"{base[0]}/{name}"})
            if path == "/api/validate-yaml":
                return self._reply(200, {})
            parts = path.split("/")
            # /api/models/<ns>/<name>/<preupload|commit>/<revision>
            if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] == "preupload":
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})
            if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] == "commit":
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(item["value"] for item in lines if item["key"] == "header")
                files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                         for item in lines if item["key"] == "file"}
                others = [item["key"] for item in lines if item["key"] not in ("header", "file")]
                repo = f"{parts[3]}/{parts[4]}"
                seen.commits.append({"repo": repo, "header": header, "files": files, "others": others})
                oid = "0" * 40
                return self._reply(200, {"commitUrl": f"{base[0]}/{repo}/commit/{oid}", "commitOid": oid,
                                         "pullRequestUrl": None})
            seen.unknown.append(f"POST {self.path}")
            self._reply(404, {"error": "not served by the stub"})

    return Handler


class StubHub:
    """The server on a free 127.0.0.1 port, in a daemon thread; `url` is its endpoint."""

    def __init__(self) -> None:
        self.seen = Seen()
        base: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.seen, base))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        base.append(self.url)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StubHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
