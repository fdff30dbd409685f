"""Where reports go (reports.store_report, the one writer of JSON reports): every location, the Markdown beside
the JSON, and what a location that fails does to the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from continuity.reports import store_report
from continuity.storage.locations import FileLocation, StorageError


class Finding(BaseModel):
    title: str


class Gone(FileLocation):
    def put_bytes(self, key: str, data: bytes, **_: object) -> object:
        raise StorageError(f"{self.describe(key)}: put failed: EndpointConnectionError")


def test_a_report_reaches_every_location_with_its_markdown(tmp_path: Path) -> None:
    locations = [FileLocation(name=n, region="r", path=tmp_path / n) for n in ("primary", "dr")]
    keys = store_report(Finding(title="ok"), locations, name="run-1", prefix="reports/x/",
                        render=lambda f: f"# {f.title}\n")
    assert keys == [loc.describe("reports/x/run-1.json") for loc in locations]
    for location in locations:
        assert json.loads(location.get_bytes("reports/x/run-1.json")) == {"title": "ok"}
        assert location.get_bytes("reports/x/run-1.md") == b"# ok\n"
    store_report(Finding(title="json only"), locations[:1], name="run-2", prefix="reports/x/")
    with pytest.raises(StorageError):
        locations[0].get_bytes("reports/x/run-2.md")


def test_a_location_that_fails_raises_unless_the_report_must_reach_the_others(tmp_path: Path) -> None:
    gone, dr = Gone(name="primary", region="r", path=tmp_path / "p"), FileLocation(name="dr", region="r", path=tmp_path / "d")
    with pytest.raises(StorageError, match="EndpointConnectionError"):
        store_report(Finding(title="audit"), [gone, dr], name="a", prefix="audit/")
    said: list[str] = []
    keys = store_report(Finding(title="audit"), [gone, dr], name="a", prefix="audit/", warn=said.append)
    assert keys == [dr.describe("audit/a.json")] and json.loads(dr.get_bytes("audit/a.json")) == {"title": "audit"}
    assert said == ["could not write audit/a.json to location primary: location primary "
                    f"({tmp_path / 'p' / 'audit/a.json'}): put failed: EndpointConnectionError"]
