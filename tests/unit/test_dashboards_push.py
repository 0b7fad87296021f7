"""`slatune dashboards push` against FakeGrafana, a test double of Grafana's HTTP API
(tests/grafana_double.py; no Grafana server can be installed here): the first push creates the
folder, the datasource and every dashboard by uid, the second changes nothing, a dashboard edited
in Grafana is put back alone, and a wrong token fails with Grafana's answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from controlplane.cli import app
from dashboards.build import FOLDER_UID, render
from dashboards.push import DATASOURCE_UID, connect, contains, push
from tests.grafana_double import FakeGrafana

TOKEN = "glsa_test_token_0123456789"


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    double = FakeGrafana(TOKEN)
    yield double
    double.close()


def test_the_first_push_creates_everything_and_the_second_changes_nothing(grafana: FakeGrafana) -> None:
    dashboards = render()
    first = push(connect(grafana.url, TOKEN), "http://127.0.0.1:9090", dashboards)
    uids = sorted(str(d["uid"]) for d in dashboards.values())
    assert sorted(first.created) == sorted(
        [f"folder {FOLDER_UID}", f"datasource {DATASOURCE_UID}"] + [f"dashboard {u}" for u in uids]
    )
    assert sorted(grafana.dashboards) == uids
    assert all(d["meta"]["folderUid"] == FOLDER_UID for d in grafana.dashboards.values())
    assert grafana.datasources[DATASOURCE_UID]["url"] == "http://127.0.0.1:9090"
    writes = len(grafana.writes())
    assert writes == 2 + len(uids)

    second = push(connect(grafana.url, TOKEN), "http://127.0.0.1:9090", dashboards)
    assert not second.changed and len(second.unchanged) == 2 + len(uids)
    assert len(grafana.writes()) == writes  # only reads
    assert all(d["dashboard"]["version"] == 1 for d in grafana.dashboards.values())


def test_push_puts_back_only_what_differs(grafana: FakeGrafana) -> None:
    push(connect(grafana.url, TOKEN), "http://127.0.0.1:9090", render())
    grafana.dashboards["slatune-slo"]["dashboard"]["title"] = "edited in the UI"
    again = push(connect(grafana.url, TOKEN), "http://prometheus:9090", render())
    assert sorted(again.updated) == ["dashboard slatune-slo", f"datasource {DATASOURCE_UID}"]
    assert grafana.dashboards["slatune-slo"]["dashboard"]["title"] == "slatune: SLOs"
    assert grafana.datasources[DATASOURCE_UID]["url"] == "http://prometheus:9090"


def test_the_cli_pushes_then_reports_no_change(grafana: FakeGrafana) -> None:
    runner = CliRunner()
    argv = ["dashboards", "push", "--url", grafana.url, "--token", TOKEN]
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    assert "created: dashboard slatune-fleet" in first.output and "6 change(s)" in first.output
    second = runner.invoke(app, argv)
    assert second.exit_code == 0 and "no change" in second.output


def test_a_wrong_token_fails_with_grafanas_answer(grafana: FakeGrafana) -> None:
    result = CliRunner().invoke(app, ["dashboards", "push", "--url", grafana.url, "--token", "wrong"])
    assert result.exit_code == 1 and "Unauthorized" in result.output
    assert grafana.writes() == []


@pytest.mark.parametrize(
    ("have", "want", "same"),
    [
        ({"a": 1, "id": 7, "version": 3}, {"a": 1}, True),  # Grafana's own fields are no difference
        ({"a": [{"x": 1, "extra": 0}]}, {"a": [{"x": 1}]}, True),
        ({"a": [1, 2]}, {"a": [1]}, False),  # a panel removed is a difference
        ({"a": 1}, {"a": 1, "b": 2}, False),
    ],
)
def test_contains(have: object, want: object, same: bool) -> None:
    assert contains(have, want) is same
