"""One tritonserver process: found, configured, started on loopback, watched and stopped.

The bundled server is the one inside the nvidia-pytriton wheel. Its python backend finds its stub
inside the backend's own folder, and the stub must link the running interpreter's libpython and
find this environment's packages, so the backend folder and the environment are assembled here
(see shared/TRITON-NOTES.md).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
log = logging.getLogger("slatune.runtime.server")


class ServerError(RuntimeError):
    """A server could not be found, started or reached; the message says what to do."""


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


@dataclass(frozen=True)
class Endpoints:
    """Where a server answers: host:port for the HTTP and gRPC clients, a URL for metrics."""

    http: str
    grpc: str
    metrics_url: str
    trace_dir: str | None = None
    """Where the server writes a trace file per request (`trace_flags`): servers slatune starts
    only. The collector reads the files for every request's server-side latency."""

    @classmethod
    def loopback(cls, ports: Ports, trace_dir: Path | None = None) -> Endpoints:
        return cls(
            f"{LOOPBACK}:{ports.http}",
            f"{LOOPBACK}:{ports.grpc}",
            f"http://{LOOPBACK}:{ports.metrics}/metrics",
            None if trace_dir is None else str(trace_dir),
        )


TRACE_FILE = "trace.json"
"""The trace file's name: Triton writes `trace.json.<n>`, one per request (`trace_flags`)."""


def trace_flags(trace_dir: Path) -> list[str]:
    """Triton's trace API on for every request (rate 1), stamps only (level TIMESTAMPS), one file
    per request (log-frequency 1: on disk as soon as the request is released, never held back
    until a batch of traces fills), in `trace_dir/trace.json.<n>` (collectors/trace.py reads and
    removes them)."""
    return [
        f"--trace-config=triton,file={trace_dir / TRACE_FILE}",
        "--trace-config=triton,log-frequency=1",
        "--trace-config=rate=1",
        "--trace-config=level=TIMESTAMPS",
    ]


def _pytriton_root() -> Path:
    import pytriton  # the wheel that bundles tritonserver

    return Path(pytriton.__file__).parent / "tritonserver"


def _pytriton_libs() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"


def find_tritonserver(configured: Path | None = None) -> Path:
    """The configured binary, else the one bundled with nvidia-pytriton."""
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise ServerError(
                f"tritonserver {configured} is not an executable file: fix `tritonserver` in the spec"
            )
        return configured
    try:
        binary = _pytriton_root() / "bin" / "tritonserver"
    except ImportError:
        raise ServerError(
            "no tritonserver: install nvidia-pytriton (it bundles one) or set `tritonserver` in the spec"
        ) from None
    if not binary.is_file():
        raise ServerError(f"the nvidia-pytriton install has no {binary}: reinstall nvidia-pytriton==0.7.0")
    return binary


def python_backend_dir(work_dir: Path) -> Path:
    """A backend directory whose python/ folder links the bundled backend and the stub built for
    this interpreter's version (links, not copies: the stub finds its libraries relative to itself)."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(
            f"nvidia-pytriton ships no python backend stub for Python {version}; use Python 3.11"
        )
    backends = work_dir / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        link = target / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    return backends


ALLOCATOR = "jemalloc"
"""The allocator tritonserver runs on, by `LD_PRELOAD` (Debian's libjemalloc2, installed by `make allocator`).

Not for speed: tritonserver 2.51's trace API unlocks a mutex in memory it has just freed
(`TraceManager::TraceRelease` deletes the request's `Trace` inside a lock guard on the `Trace`'s
own mutex). slatune traces every request, so with glibc's malloc, whose freed chunks another
thread can take at once, the unlock now and then read or wrote a reused chunk and the server died
of SIGILL or SIGSEGV, or corrupted its heap and hung (about once per 30-60 minutes of the shift
benchmark's load, within minutes of `benchmarks.soak`'s; docs/triton.md, Server).
jemalloc keeps a freed block in the freeing thread's own cache and writes nothing into it, so the
late unlock finds the mutex as it was. Triton's docs suggest jemalloc or tcmalloc anyway, for the
memory glibc's arenas hold on to."""


def allocator_preload(env: Mapping[str, str], allocator: str = ALLOCATOR) -> str | None:
    """`LD_PRELOAD` with the allocator's library first (an operator's own preloads kept after it),
    or None when the library is not installed (`ldconfig` does not know it)."""
    lib = ctypes.util.find_library(allocator)
    if lib is None:
        return None
    rest = [p for p in re.split(r"[:\s]+", env.get("LD_PRELOAD", "")) if p and p != lib]
    return ":".join([lib, *rest])


def server_environment(
    base: Mapping[str, str] | None = None, allocator: str | None = ALLOCATOR
) -> dict[str, str]:
    """The environment the server (and so each model's stub) runs with: this interpreter's
    libpython and bin first, one math thread per model instance (instances are the parallelism),
    and `allocator` preloaded (`ALLOCATOR`; when it is not installed, a warning and glibc's malloc;
    None: glibc's malloc, for the benchmark that shows why not)."""
    env = dict(os.environ if base is None else base)
    preload = None if allocator is None else allocator_preload(env, allocator)
    if preload is not None:
        env["LD_PRELOAD"] = preload
    elif allocator is not None:
        log.warning(
            "lib%s is not installed: tritonserver runs on glibc's malloc, with which a use-after-free "
            "in its trace API now and then kills it (docs/triton.md, Server). Install Debian's "
            "libjemalloc2 (`make allocator`; `make demo` and `make test` run it)",
            allocator,
        )
    libdirs = [str(sysconfig.get_config_var("LIBDIR")), str(_pytriton_libs())]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libdirs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def child_argv(argv: Sequence[str], cores: frozenset[int] | None = None) -> list[str]:
    """`argv` started so that it is sent SIGTERM when the thread that starts it dies (util-linux's
    `setpriv --pdeathsig`: no server outlives slatune, from the moment setpriv has run, a
    millisecond or so after the start), and, given `cores`, runs on those alone
    (`taskset`: affinity is inherited by every process the server starts, its python backend stubs
    included, so the whole server stays on its devices' cores). Both wrappers exec what follows:
    the process is the server's, pid and process group.

    Not a `preexec_fn`: with one, Python forks rather than vforks, and fork runs grpcio's fork
    handlers, which restart gRPC's poller in the child; closing the inherited descriptors before
    exec then closes the poller's epoll fd and the child aborts before it is ever the server
    (SIGABRT, "Epoll1Poller ... epoll_wait error: Bad file descriptor"). With a thread calling
    gRPC, 36 of 2,000 such children died; none without a preexec_fn (docs/triton.md)."""
    pinned = [] if cores is None else ["taskset", "--cpu-list", _ranges(cores)]
    return ["setpriv", "--pdeathsig", "TERM", "--", *pinned, *argv]


def spawn(
    argv: Sequence[str],
    log: IO[bytes],
    env: Mapping[str, str] | None = None,
    cores: frozenset[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` as a process slatune owns (`child_argv`), in a process group of its own inside
    slatune's session (see TritonProcess), writing to `log`."""
    return subprocess.Popen(
        child_argv(argv, cores),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        process_group=0,
    )


def host_cores() -> frozenset[int]:
    """The cores this process may run on (and so may pin a server to)."""
    return frozenset(os.sched_getaffinity(0))


def _ranges(cores: Iterable[int]) -> str:
    """`0-3,6` for cores 0, 1, 2, 3, 6."""
    out: list[str] = []
    for c in sorted(cores):
        if out and out[-1].split("-")[-1] == str(c - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


class TritonProcess:
    """A tritonserver in its own process group, logging to a file.

    Its own process group, not its own session: Linux's autogroup scheduling weighs each session
    as one task, so a server in a session of its own had its bulk stubs' idle-class time counted
    against the latency-critical stubs beside them, and any thread of slatune's session (its
    clients, the control plane) won a core over a waking guard (docs/triton.md, Scheduling)."""

    def __init__(
        self,
        name: str,
        binary: Path,
        repository: Path,
        backend_dir: Path,
        log_path: Path,
        ports: Ports,
        rate_limit_resources: Mapping[str, int],
        env: Mapping[str, str],
        trace_dir: Path | None = None,
        cores: Iterable[int] | None = None,
    ) -> None:
        """`cores`: the host cores the server (and every process it starts) is pinned to; None
        leaves it free to run anywhere."""
        self.name = name
        self.cores = None if cores is None else frozenset(cores)
        self.trace_dir = trace_dir
        self.binary = binary
        self.repository = repository
        self.backend_dir = backend_dir
        self.log_path = log_path
        self.ports = ports
        self.rate_limit_resources = dict(rate_limit_resources)
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.loopback(self.ports, self.trace_dir)

    def command(self) -> list[str]:
        p = self.ports
        cmd = [
            str(self.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backend_dir}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--strict-readiness=true",
            f"--http-address={LOOPBACK}",
            f"--grpc-address={LOOPBACK}",
            f"--metrics-address={LOOPBACK}",
            f"--http-port={p.http}",
            f"--grpc-port={p.grpc}",
            f"--metrics-port={p.metrics}",
            "--metrics-config=summary_latencies=true",
            "--metrics-interval-ms=1000",
            "--rate-limit=execution_count",
            "--exit-timeout-secs=15",
            "--log-verbose=0",
        ]
        cmd += [f"--rate-limit-resource={n}:{c}" for n, c in sorted(self.rate_limit_resources.items())]
        if self.trace_dir is not None:
            cmd += trace_flags(self.trace_dir)
        return cmd

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait until the server and every model are ready; return the seconds it took."""
        for field, port in (
            ("http_port", self.ports.http),
            ("grpc_port", self.ports.grpc),
            ("metrics_port", self.ports.metrics),
        ):
            if port_in_use(port):
                raise ServerError(
                    f"server {self.name!r}: {field} {port} is already in use on {LOOPBACK}; "
                    "choose another port in the spec, or leave it out to have a free one picked"
                )
        if self.cores is not None and not self.cores <= (available := host_cores()):
            raise ServerError(
                f"server {self.name!r} is to be pinned to cores {_ranges(self.cores)} (its devices' "
                f"cores), but core(s) {_ranges(self.cores - available)} are not on this host (slatune "
                f"may run on cores {_ranges(available)}): fix the devices' `cores` in the spec"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.trace_dir is not None:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        command = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== slatune: starting {' '.join(child_argv(command, self.cores))}\n".encode())
            log.flush()
            self.proc = spawn(command, log, self.env, self.cores)
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(self._failure(f"exited with status {self.proc.returncode} while starting"))
            if self.ready():
                return time.monotonic() - began
            time.sleep(0.1)
        self.stop()
        raise ServerError(self._failure(f"was not ready within {timeout:.0f} s"))

    def ready(self) -> bool:
        return self._health("ready", timeout=1.0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def responsive(self) -> bool:
        """Whether the server answers its liveness endpoint (within 2 s): a process can be alive
        and serve nothing (the supervisor's hang check)."""
        return self._health("live", timeout=2.0)

    def _health(self, which: str, timeout: float) -> bool:
        """Whether Triton's `/v2/health/<which>` answers 200 within `timeout`."""
        url = f"http://{self.endpoints.http}/v2/health/{which}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group (the server and its model stubs), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stubs left behind by a server that exited
        proc.wait()

    def log_tail(self, lines: int = 40) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def _failure(self, what: str) -> str:
        """Why the server did not come up, from its log: models that failed to load first."""
        tail = self.log_tail(400)
        reasons = []
        for line in tail:
            match = _LOAD_FAILURE.search(line)
            if match:
                reasons.append(f"model {match['model']!r} failed to load: {match['why'].strip()}")
        if reasons:
            reasons.append("fix the model (or drop it from the spec) and start again")
        else:
            reasons = [ln.strip() for ln in tail if ln.startswith("E") and not any(n in ln for n in _NOISE)][
                -6:
            ]
            reasons += [
                ln.strip() for ln in tail if "error:" in ln.lower() and not any(n in ln for n in _NOISE)
            ][-3:]
        msg = f"tritonserver {self.name!r} {what}"
        if reasons:
            msg += ":\n  " + "\n  ".join(reasons)
        return msg + f"\nfull log: {self.log_path}"


_LOAD_FAILURE = re.compile(r"failed to load '(?P<model>[^']+)' version \d+: (?P<why>.*?)(?:\\n|\"|$)")
# Lines every CPU-only start prints; they are not why a start failed.
_NOISE = ("NVML", "CudaDriverHelper", "DCGM", "CUDA driver")
