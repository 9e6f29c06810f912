"""``doctor``: a missing required package (gsplat, diffusers ...) makes the report fail, with a fix."""

from __future__ import annotations

import pytest

from backend import doctor


@pytest.mark.parametrize("missing", ["gsplat", "diffusers"])
def test_a_missing_dependency_is_a_failure(monkeypatch, missing):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist == missing else real(dist))
    report = doctor.doctor_report()
    entry = report["packages"][missing]
    assert entry["ok"] is False and entry["required"] is True and "make install" in entry["fix"]
    assert report["ok"] is False
    if missing == "gsplat":
        assert report["gsplat"]["ok"] is False and report["gsplat"]["path"] == "missing"


def test_this_installation_is_complete():
    report = doctor.doctor_report()
    assert all(e["ok"] for e in report["packages"].values()), report["packages"]
    assert report["gsplat"]["ok"] is True and report["gsplat"]["path"] in ("cuda", "cpu-reference")
