"""A Python plugin that misbehaves as its `mode` setting says, to test that the host's limits
and error handling hold for components carrying an interpreter: exception, permanent, loop,
alloc, flood; anything else handles the event."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv, log, settings, types


def misbehave(mode: str | None) -> None:
    if mode == "exception":
        raise LookupError("no profile for this user")
    if mode == "permanent":
        raise Err(types.HandleError_Permanent("misbehave: refuses"))
    if mode == "loop":
        while True:
            pass
    if mode == "alloc":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if mode == "flood":
        line = "x" * (64 * 1024)
        while True:
            log.log(log.Level.INFO, line)
    kv.increment("handled", 1)


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        try:
            misbehave(settings.get("mode"))
        except Err:
            raise
        except Exception as e:
            raise Err(types.HandleError_Retryable(f"{type(e).__name__}: {e}"[:1000]))
