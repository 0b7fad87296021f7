"""FakeGrafana: a TEST DOUBLE of Grafana's HTTP API, not Grafana. No Grafana server can be installed
here (no registry serves one), so `slatune dashboards push` is tested against this recorded contract
of the endpoints grafana-client calls, with the request and response shapes Grafana documents
(https://grafana.com/docs/grafana/latest/developers/http_api/: folder, data_source, dashboard):

    GET  /api/folders/:uid               200 folder | 404 {"message": "folder not found"}
    POST /api/folders                    200 folder | 409 when the uid exists
    PUT  /api/folders/:uid               200 folder
    GET  /api/datasources/uid/:uid       200 data source | 404 {"message": "Data source not found"}
    POST /api/datasources                200 {"datasource", "id", "message": "Datasource added", "name"} | 409 same name
    PUT  /api/datasources/uid/:uid       200 {"datasource", "id", "message": "Datasource updated", "name"}
    GET  /api/dashboards/uid/:uid        200 {"dashboard", "meta"} | 404 {"message": "Dashboard not found"}
    POST /api/dashboards/db              200 {"id", "uid", "url", "status": "success", "version", "slug"}
                                         | 412 {"status": "name-exists"} for an existing uid without overwrite

Every request needs `Authorization: Bearer <token>` (401 otherwise). Like Grafana, it stores what it
is sent plus ids and versions of its own, so a client comparing before writing must tolerate them.
It serves on 127.0.0.1 on a free port and records every request."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeGrafana:
    def __init__(self, token: str) -> None:
        self.token = token
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._ids = 0
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with double._lock:
                    double.requests.append((method, self.path))
                    if self.headers.get("Authorization") != f"Bearer {double.token}":
                        status, out = 401, {"message": "Unauthorized"}
                    else:
                        status, out = double.route(method, self.path.split("?")[0], body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def do_PUT(self) -> None:
                self._answer("PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def _id(self) -> int:
        self._ids += 1
        return self._ids

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if m := re.fullmatch(r"/api/folders/([^/]+)", path):
            uid = m[1]
            if method == "GET":
                return (
                    (200, self.folders[uid])
                    if uid in self.folders
                    else (404, {"message": "folder not found"})
                )
            if method == "PUT" and uid in self.folders:
                folder = self.folders[uid]
                folder.update(title=body["title"], version=folder["version"] + 1)
                return 200, folder
        if path == "/api/folders" and method == "POST":
            uid = body.get("uid") or f"f{self._ids + 1}"
            if uid in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[uid] = {"id": self._id(), "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/",
                                 "version": 1, "parentUid": body.get("parentUid")}  # fmt: skip
            return 200, self.folders[uid]
        if m := re.fullmatch(r"/api/datasources/uid/([^/]+)", path):
            uid = m[1]
            if method == "GET":
                found = self.datasources.get(uid)
                return (200, found) if found else (404, {"message": "Data source not found"})
            if method == "PUT" and uid in self.datasources:
                ds = {
                    **self.datasources[uid],
                    **body,
                    "uid": uid,
                    "version": self.datasources[uid]["version"] + 1,
                }
                self.datasources[uid] = ds
                return 200, {
                    "datasource": ds,
                    "id": ds["id"],
                    "message": "Datasource updated",
                    "name": ds["name"],
                }
        if path == "/api/datasources" and method == "POST":
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            ds = {"id": self._id(), "orgId": 1, "basicAuth": False, "isDefault": False, "readOnly": False,
                  "version": 1, "jsonData": {}, **body}  # fmt: skip
            self.datasources[ds["uid"]] = ds
            return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]}
        if m := re.fullmatch(r"/api/dashboards/uid/([^/]+)", path):
            found = self.dashboards.get(m[1])
            return (200, found) if found and method == "GET" else (404, {"message": "Dashboard not found"})
        if path == "/api/dashboards/db" and method == "POST":
            dash = dict(body["dashboard"])
            uid = dash["uid"]
            old = self.dashboards.get(uid)
            if old is not None and not body.get("overwrite"):
                return 412, {
                    "message": "A dashboard with the same uid already exists",
                    "status": "name-exists",
                }
            folder_uid = body.get("folderUid", "")
            if folder_uid and folder_uid not in self.folders:
                return 400, {"message": "folder not found"}
            version = 1 if old is None else old["dashboard"]["version"] + 1
            dash.update(id=old["dashboard"]["id"] if old else self._id(), version=version)
            slug = re.sub(r"[^a-z0-9]+", "-", dash["title"].lower()).strip("-")
            meta = {"slug": slug, "url": f"/d/{uid}/{slug}", "version": version, "folderUid": folder_uid,
                    "folderTitle": self.folders[folder_uid]["title"] if folder_uid else "General",
                    "provisioned": False}  # fmt: skip
            self.dashboards[uid] = {"dashboard": dash, "meta": meta}
            return 200, {"id": dash["id"], "uid": uid, "url": meta["url"], "status": "success", "version": version,
                         "slug": slug}  # fmt: skip
        return 404, {"message": "Not found"}
