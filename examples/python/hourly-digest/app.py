"""hourly-digest: a firstcome consumer plugin in Python.

It counts each campaign's coupons per hour (UTC) in its key-value store and emails the
operator a digest each time an hour's count reaches a multiple of `digest_every`: "Flash sale:
200 coupons in the hour from 14:00 UTC, 1,350 in all".

Settings: `operator_email` (required), `digest_every` (default 100). Grants: kv, email.

The logic is plain Python, tested natively with pytest (test_app.py); the classes at the
bottom connect it to the host (../../../wit/plugin.wit, world `consumer-with-init`).
"""

from datetime import datetime, timezone

HOUR_MS = 3_600_000
DEFAULT_EVERY = 100


def digest_every(value: str | None) -> int:
    """The `digest_every` setting: a whole number of coupons, at least 1."""
    if value is None:
        return DEFAULT_EVERY
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"digest_every must be a whole number of coupons, at least 1, not {value!r}")
    return int(value)


def check_settings(settings: dict[str, str]) -> None:
    """Refuses settings the plugin cannot work with (the host then keeps the previous version)."""
    email = settings.get("operator_email", "")
    if "@" not in email:
        raise ValueError("operator_email must be set to the address that receives the digests")
    digest_every(settings.get("digest_every"))


def hour_key(campaign_id: str, issued_at_ms: int) -> str:
    """The kv counter of the campaign's coupons in the hour of `issued_at_ms`."""
    return f"hour:{campaign_id}:{issued_at_ms // HOUR_MS}"


def coupons(n: int) -> str:
    """`n` coupons, in words: "1 coupon", "1,350 coupons"."""
    return f"{n:,} coupon" if n == 1 else f"{n:,} coupons"


def digest(campaign_name: str, issued_at_ms: int, in_hour: int, total: int) -> tuple[str, str]:
    """The digest's subject and body."""
    start = datetime.fromtimestamp(issued_at_ms // HOUR_MS * 3600, tz=timezone.utc)
    hour = start.strftime("%Y-%m-%d %H:00")
    subject = f"{campaign_name}: {coupons(in_hour)} in the hour from {hour} UTC, {total:,} in all"
    body = (
        f"{campaign_name} issued {coupons(in_hour)} in the hour from {hour} UTC "
        f"and {coupons(total)} since it opened.\n"
    )
    return subject, body


try:
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import email, kv, settings, types
except ImportError:  # natively (pytest): the bindings exist only in the component
    exports = None

if exports is not None:

    class Init(exports.Init):
        def init(self, pairs: list[tuple[str, str]]) -> None:
            try:
                check_settings(dict(pairs))
            except ValueError as e:
                raise Err(str(e))

    class Handler(exports.Handler):
        def handle(self, event: "types.Event") -> None:
            try:
                handle(event)
            except Err:
                raise
            except Exception as e:
                raise Err(types.HandleError_Retryable(f"{type(e).__name__}: {e}"[:1000]))

    def handle(event: "types.Event") -> None:
        if not isinstance(event, types.Event_CouponIssued):
            return
        c = event.value
        every = digest_every(settings.get("digest_every"))
        in_hour = kv.increment(hour_key(c.campaign_id, c.issued_at_ms), 1)
        total = kv.increment(f"total:{c.campaign_id}", 1)
        if in_hour % every == 0:
            subject, body = digest(c.campaign_name, c.issued_at_ms, in_hour, total)
            try:
                email.send(settings.get("operator_email") or "", subject, body)
            except Err as e:
                # Undelivered: the event is retried, and its counts are not kept until then.
                raise Err(types.HandleError_Retryable(f"digest not sent: {e.value}"))
