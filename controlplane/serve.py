"""The REST API served by uvicorn on a thread of the control plane's process."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


class ApiServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Serve on a thread; return once it listens, or raise OSError naming the address."""
        self._thread = threading.Thread(target=self._server.run, name="slatune-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the API could not listen on {self.host}:{self.port} (in use?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
