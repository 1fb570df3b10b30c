"""The stats plugin's counting (plugins/stats) in Python, for the language benchmark: the same
counters for the same events, so the harness can check it against the native logic."""

import re

from wit_world import exports
from wit_world.imports import stats, types

_UNSAFE = re.compile(r"[^a-z0-9_-]")


def label(value: str | None) -> str:
    """A counter-name-safe label: lowercase a-z 0-9 - _, at most 32, "unknown" if empty."""
    cleaned = _UNSAFE.sub("", (value or "").strip().lower())[:32]
    return cleaned or "unknown"


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        if isinstance(event, types.Event_CouponIssued):
            c = event.value
            stats.increment("issued", 1)
            stats.increment("revenue", c.campaign_value)
            stats.increment(f"gender.{label(c.gender)}", 1)
            stats.increment(f"age_group.{label(c.age_group)}", 1)
            stats.publish()
