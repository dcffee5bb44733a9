"""The demo says at once when it cannot run (an installed archiver has no moto), before it
makes any media or starts PostgreSQL."""

from __future__ import annotations

import importlib.util

import pytest

from archiver.demo import tour
from archiver.errors import ConfigError


def test_without_moto_the_demo_stops_before_making_anything(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a)
    )

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("started something")

    monkeypatch.setattr(tour.LocalPostgres, "create", never)
    monkeypatch.setattr(tour, "make_sample_set", never)
    with pytest.raises(ConfigError, match="moto"):
        tour.run_demo(tour.DemoOptions(files=10))
