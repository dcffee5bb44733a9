"""Whether to HEAD before a PUT: the existence policy, as a re-run over stored objects
and a run of new ones meet it."""

from __future__ import annotations

from archiver.policies import ExistencePolicy


def test_existence_policy() -> None:
    p = ExistencePolicy(misses_to_switch=3)
    assert p.head_first  # a re-run's first rows are the likeliest to be stored already
    p.absent(), p.absent()
    assert p.head_first
    p.absent()
    assert not p.head_first  # three misses in a row: conditional PUTs from now on
    p.present()
    assert p.head_first  # something was there: HEAD first again
    p.absent(), p.absent(), p.absent()
    assert not p.head_first
    p.no_conditional_writes()
    for _ in range(10):
        p.absent()
    assert p.head_first  # without conditional writes HEAD is the only check
