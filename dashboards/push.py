"""`slatune dashboards push`: put slatune's folder, its Prometheus datasource and its dashboards into
a running Grafana through its HTTP API (grafana-client), each by uid. Each is read first and written
only when it differs from what slatune would write, so pushing twice changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from dashboards.build import FOLDER_TITLE, FOLDER_UID

DATASOURCE_UID = "slatune-prometheus"
DATASOURCE_NAME = "Prometheus (slatune)"


@dataclass
class PushResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def contains(have: Any, want: Any) -> bool:
    """Whether `have` holds everything of `want` (Grafana adds ids, versions and defaults of its own
    to what it stores: those are not differences)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(contains, have, want))
    return bool(have == want)


def _get(call: Any, *args: Any) -> Any | None:
    """The object, or None where Grafana answers 404."""
    try:
        return call(*args)
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise


def datasource(prometheus_url: str) -> dict[str, Any]:
    return {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
    }


def push(api: GrafanaApi, prometheus_url: str, dashboards: Mapping[str, Mapping[str, Any]]) -> PushResult:
    """Create or update slatune's folder, datasource and `dashboards` (by uid) where they differ."""
    result = PushResult()
    folder = _get(api.folder.get_folder, FOLDER_UID)
    if folder is None:
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        result.created.append(f"folder {FOLDER_UID}")
    elif folder.get("title") != FOLDER_TITLE:
        api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        result.updated.append(f"folder {FOLDER_UID}")
    else:
        result.unchanged.append(f"folder {FOLDER_UID}")

    want = datasource(prometheus_url)
    have = _get(api.datasource.get_datasource_by_uid, DATASOURCE_UID)
    if have is None:
        api.datasource.create_datasource(want)
        result.created.append(f"datasource {DATASOURCE_UID}")
    elif not contains(have, want):
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, {**have, **want})
        result.updated.append(f"datasource {DATASOURCE_UID}")
    else:
        result.unchanged.append(f"datasource {DATASOURCE_UID}")

    for model in dashboards.values():
        uid = str(model["uid"])
        stored = _get(api.dashboard.get_dashboard, uid)
        if (
            stored is not None
            and stored.get("meta", {}).get("folderUid") == FOLDER_UID
            and contains(stored.get("dashboard"), model)
        ):
            result.unchanged.append(f"dashboard {uid}")
            continue
        body = {"dashboard": {**model, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                "message": "slatune dashboards push"}  # fmt: skip
        api.dashboard.update_dashboard(body)
        (result.created if stored is None else result.updated).append(f"dashboard {uid}")
    return result


def connect(url: str, token: str, timeout_s: float = 10.0) -> GrafanaApi:
    return GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
