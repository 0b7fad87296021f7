"""Starting, failing, supervising and attaching: clear errors that say what to do, no orphaned
processes, a dead server restarted with its last applied configuration."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from domain.spec import embedded_spec_path, load_spec, resolve_spec
from runtime.fleet import Fleet, read_state
from runtime.render import knobs_of
from runtime.server import ServerError
from tests.conftest import pids_running

pytestmark = pytest.mark.integration


def small_spec(tmp_path: Path, **server: object) -> Path:
    """The default fleet cut down to the guard alone (fast to start), with server overrides."""
    data = yaml.safe_load(embedded_spec_path("default").read_text())
    data["models"] = [m for m in data["models"] if m["name"] == "safety-guard"]
    data["servers"][0].update(server)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_model_that_fails_to_load_names_it_and_leaves_nothing_running(tmp_path: Path) -> None:
    repo = tmp_path / "user-repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.py").write_text("raise ImportError('weights file missing')\n")
    (repo / "broken" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 1\ninput { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }\n'
    )
    spec_path = small_spec(tmp_path)
    data = yaml.safe_load(spec_path.read_text())
    data["models"].append(
        {
            "name": "broken",
            "role": "bulk",
            "server": "triton0",
            "device": "dev0",
            "source": {"repository": str(repo)},
            "memory_gb_per_instance": 1,
        }
    )
    spec_path.write_text(yaml.safe_dump(data))
    work = tmp_path / "work"
    with pytest.raises(ServerError) as err:
        Fleet(load_spec(spec_path), work).start()
    assert "broken" in str(err.value) and "weights file missing" in str(err.value)
    assert "full log:" in str(err.value)
    assert pids_running(str(work / "repositories")) == []


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = load_spec(small_spec(tmp_path, http_port=port))
        with pytest.raises(ServerError, match=rf"http_port {port} is already in use on 127.0.0.1"):
            Fleet(spec, tmp_path / "work").start()


def test_a_missing_binary_says_what_to_do(tmp_path: Path) -> None:
    spec = load_spec(small_spec(tmp_path)).model_copy(
        update={"tritonserver": tmp_path / "no-such-tritonserver"}
    )
    with pytest.raises(ServerError, match="is not an executable file: fix `tritonserver` in the spec"):
        Fleet(spec, tmp_path / "work").start()


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_a_dead_server_is_restarted_with_its_last_applied_configuration(tmp_path: Path) -> None:
    spec = load_spec(small_spec(tmp_path))
    work = tmp_path / "work"
    with Fleet(spec, work) as fleet:
        fleet.apply("safety-guard", max_queue_delay_us=700, instances=2)
        proc = fleet._servers["triton0"].process
        assert proc is not None and proc.proc is not None
        os.killpg(proc.proc.pid, signal.SIGKILL)
        assert wait_for(lambda: fleet.restarts("triton0") == 1 and proc.ready(), 60)
        observed = knobs_of(fleet.observed_config("safety-guard"))
        assert (observed.max_queue_delay_us, observed.instances) == (700, 2)
        assert fleet.endpoints("triton0") == proc.endpoints  # same ports: clients reconnect
    assert pids_running(str(work / "repositories")) == []


def test_a_hung_server_is_stopped_and_restarted(tmp_path: Path) -> None:
    """A server that aborts can hang in Triton's signal handler, alive and serving nothing: one
    frozen (SIGSTOP) stands in for it. The supervisor here judges 3 s of silence a hang (30 s in
    production), asking every second."""
    spec = load_spec(small_spec(tmp_path))
    work = tmp_path / "work"
    with Fleet(spec, work) as fleet:
        supervisor = fleet._supervisor
        assert supervisor is not None
        supervisor.hang_s, supervisor.probe_s = 3.0, 1.0
        proc = fleet._servers["triton0"].process
        assert proc is not None and proc.proc is not None
        frozen = proc.proc.pid
        os.kill(frozen, signal.SIGSTOP)
        try:
            assert wait_for(lambda: fleet.restarts("triton0") == 1 and proc.ready(), 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        assert proc.proc is not None and proc.proc.pid != frozen
        assert not os.path.exists(f"/proc/{frozen}")
    assert pids_running(str(work / "repositories")) == []


def test_stop_leaves_no_process_and_state_tells_where_it_runs(tmp_path: Path) -> None:
    work = tmp_path / "work"
    fleet = Fleet(load_spec(small_spec(tmp_path)), work)
    fleet.start()
    try:
        running = read_state(work)
        assert running.pid == os.getpid()
        assert running.endpoints["triton0"] == fleet.endpoints("triton0")
        assert pids_running(str(work / "repositories"))
    finally:
        fleet.stop()
    assert pids_running(str(work / "repositories")) == []
    with pytest.raises(ServerError, match="no running fleet"):
        read_state(work)


def test_attach_to_a_running_server_and_reconfigure_it(tmp_path: Path) -> None:
    """Most users already run Triton: a spec can name it by URL instead of starting one."""
    with Fleet(load_spec(small_spec(tmp_path)), tmp_path / "owner") as owner:
        e = owner.endpoints("triton0")
        data = yaml.safe_load(small_spec(tmp_path).read_text())
        data["servers"] = [
            {
                "name": "existing",
                "http_url": f"http://{e.http}",
                "grpc_url": e.grpc,
                "metrics_url": e.metrics_url,
            }
        ]
        data["models"][0]["server"] = "existing"
        path = tmp_path / "attach.yaml"
        path.write_text(yaml.safe_dump(data))
        with Fleet(load_spec(path), tmp_path / "attached") as attached:
            assert attached.knobs("safety-guard") == owner.knobs("safety-guard")
            result = attached.apply("safety-guard", priority=3)
            assert result.path == "in-place"
            assert knobs_of(owner.observed_config("safety-guard")).priority == 3
        # detaching stops nothing
        assert owner._servers["triton0"].process is not None and owner._servers["triton0"].process.ready()


def test_attach_to_nothing_says_so(tmp_path: Path) -> None:
    data = yaml.safe_load(small_spec(tmp_path).read_text())
    data["servers"] = [
        {
            "name": "gone",
            "http_url": "http://127.0.0.1:9",
            "grpc_url": "127.0.0.1:9",
            "metrics_url": "http://127.0.0.1:9/metrics",
        }
    ]
    data["models"][0]["server"] = "gone"
    path = tmp_path / "attach.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ServerError, match=r"cannot be reached|is not ready"):
        Fleet(load_spec(path), tmp_path / "w").start()


def test_default_fleet_starts_within_a_minute(tmp_path: Path) -> None:
    """Printed, not a latency assertion: the figure that counts is in docs/benchmarks.md."""
    began = time.monotonic()
    with Fleet(resolve_spec(None), tmp_path / "w"):
        took = time.monotonic() - began
    print(f"default fleet up and serving in {took:.1f} s")
    assert took < 120  # the start timeout itself
