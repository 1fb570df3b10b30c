"""{name}: a firstcome consumer plugin, in Python.

The logic is plain Python, tested natively with pytest (test_app.py). The class at the bottom
connects it to the host's capabilities (wit/plugin.wit); componentize-py generates the
`wit_world` bindings when it builds the component.
"""


def describe(user_id: str, campaign_name: str, position: int) -> str:
    """What the plugin logs for an issued coupon."""
    return f"{user_id} got coupon #{position} of {campaign_name}"


def counter_key(age_group: str | None) -> str:
    """The kv counter the plugin keeps per age group."""
    return f"issued.{age_group or 'unknown'}"


try:
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import kv, log, types
except ImportError:  # natively (pytest): the bindings exist only in the component
    exports = None

if exports is not None:

    class Handler(exports.Handler):
        def handle(self, event: "types.Event") -> None:
            try:
                handle(event)
            except Err:
                raise  # HandleError_Permanent goes straight to the dead letters
            except Exception as e:
                # Retried with back-off, then dead-lettered, with its message: an exception
                # left to escape would trap, and its message would be lost.
                raise Err(types.HandleError_Retryable(f"{type(e).__name__}: {e}"[:1000]))

    def handle(event: "types.Event") -> None:
        if isinstance(event, types.Event_CouponIssued):
            c = event.value
            log.log(log.Level.INFO, describe(c.user_id, c.campaign_name, c.position))
            # Needs `grants = ["kv"]` in the campaign file.
            kv.increment(counter_key(c.age_group), 1)
