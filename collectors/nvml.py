"""Per-GPU utilization, memory and per-process memory from NVML (nvidia-ml-py).

Without a GPU or a driver, NVML cannot start: the collector says so once and stays off. That is
never an error: a CPU-only fleet is a fleet.
"""

from __future__ import annotations

import logging
from typing import Any

from domain.windows import DeviceWindow

log = logging.getLogger("slatune.collectors.nvml")


class NvmlCollector:
    def __init__(self) -> None:
        self.enabled = False
        self.reason = ""
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.enabled = True
            log.info("NVML on: %d GPU(s)", pynvml.nvmlDeviceGetCount())
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
            self.reason = f"{exc.__class__.__name__}: {exc}"
            log.info("NVML not available (%s); GPU collection stays off", self.reason)

    def windows(self, start: float, end: float) -> list[DeviceWindow]:
        """One window per GPU: utilization over NVML's last sample period, memory now."""
        if not self.enabled:
            return []
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            util = nv.nvmlDeviceGetUtilizationRates(handle)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            try:
                power = nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except nv.NVMLError:
                power = None
            processes = {}
            try:
                for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    processes[str(p.pid)] = float(p.usedGpuMemory or 0)
            except nv.NVMLError:
                pass
            uuid = nv.nvmlDeviceGetUUID(handle)
            out.append(
                DeviceWindow(
                    device=uuid if isinstance(uuid, str) else uuid.decode(),
                    kind="gpu",
                    source="nvml",
                    start=start,
                    end=end,
                    utilization=util.gpu / 100.0,
                    memory_used_bytes=float(mem.used),
                    memory_total_bytes=float(mem.total),
                    power_w=power,
                    processes=processes,
                )
            )
        return out

    def close(self) -> None:
        if self.enabled:
            self._nvml.nvmlShutdown()
            self.enabled = False
