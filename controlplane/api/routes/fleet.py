"""The fleet: servers, devices (memory used against budget), models with what runs and what is
asked for."""

from __future__ import annotations

from fastapi import APIRouter

from controlplane.api.deps import PlaneDep, SessionDep, known_model
from controlplane.api.proposals import version_out
from controlplane.api.schemas import DeviceOut, ErrorOut, FleetOut, ModelOut, ServerOut
from controlplane.plane import ControlPlane, slas_of
from domain.diagnosis import device_utilization
from domain.spec import device_memory_used
from store import configs, queries

router = APIRouter(tags=["fleet"])


def _servers(plane: ControlPlane) -> list[ServerOut]:
    stale = set(plane.collector.stale()) if plane.collector is not None else set()
    return [
        ServerOut(
            name=s.name,
            managed=not s.attached,
            grpc=plane.fleet.endpoints(s.name).grpc,
            metrics_url=plane.fleet.endpoints(s.name).metrics_url,
            ready=s.name not in stale,
            restarts=plane.fleet.restarts(s.name),
        )
        for s in plane.fleet.spec.servers
    ]


def _devices(plane: ControlPlane) -> list[DeviceOut]:
    spec = plane.fleet.spec
    used = device_memory_used(spec, plane.fleet.all_knobs())
    with plane.store.session() as session:
        per_server = queries.server_utilization(session, plane.clock() - UTILIZATION_S)
    busy = device_utilization(spec, per_server)
    out = []
    for d in spec.devices:
        here = [m for m in spec.models if m.device == d.name]
        servers = sorted({m.server for m in here})
        out.append(
            DeviceOut(
                name=d.name,
                kind=d.kind,
                memory_gb=d.memory_gb,
                used_gb=used[d.name],
                models=[m.name for m in here],
                servers=servers,
                utilization=busy.get(d.name),
                cores=d.cores,
            )
        )
    return out


UTILIZATION_S = 30.0
"""The span a device's utilization is averaged over."""


@router.get("/fleet", response_model=FleetOut)
def fleet(plane: PlaneDep) -> FleetOut:
    """The fleet's servers (ready: its last scrape answered), devices and model names."""
    spec = plane.fleet.spec
    return FleetOut(name=spec.name, servers=_servers(plane), devices=_devices(plane), models=spec.model_names)


@router.get("/devices", response_model=list[DeviceOut])
def devices(plane: PlaneDep) -> list[DeviceOut]:
    """Each device: its memory (what the models' instances hold against its budget) and the
    placement (its models and their servers)."""
    return _devices(plane)


def _models(plane: ControlPlane, session: SessionDep, names: list[str]) -> list[ModelOut]:
    applied, desired = configs.applied(session), configs.desired(session)
    rows = queries.models(session, names)
    slas = slas_of(list(rows.values()))
    knobs = plane.fleet.all_knobs()
    out = []
    for name in names:
        m = plane.fleet.spec.model(name)
        out.append(
            ModelOut(
                name=name,
                role=m.role,
                server=m.server,
                device=m.device,
                memory_gb_per_instance=m.memory_gb_per_instance,
                sla=slas.get(name, m.sla),
                knobs=knobs[name],
                applied=version_out(name, applied[name]) if name in applied else None,
                desired=version_out(name, desired[name]) if name in desired else None,
            )
        )
    return out


@router.get("/models", response_model=list[ModelOut])
def models(plane: PlaneDep, session: SessionDep) -> list[ModelOut]:
    """Every model: role, SLA, the knobs it runs with, its applied and desired versions."""
    return _models(plane, session, plane.fleet.spec.model_names)


@router.get(
    "/models/{model}", response_model=ModelOut, responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
)
def model(model: str, plane: PlaneDep, session: SessionDep) -> ModelOut:
    known_model(plane, model)
    return _models(plane, session, [model])[0]
