"""An instance's side of failure detection: one lock for everything it sends on its report pipe
(its loop and its heartbeat thread share the pipe), and the heartbeat thread itself.

The heartbeat runs on a thread of its own, not in the step loop, so that an idle instance (its
loop blocked on the command pipe) and one in a long step still beat: the server fails only an
instance that is frozen (SIGSTOP, a hung driver) or gone. The model's kernels release the GIL.
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection

from hyperflexis.backends.messages import Heartbeat

HEARTBEAT_INTERVAL_S = 0.25  # the server's --instance-timeout-s must be several of these


class ReportSender:
    """The report pipe, safe to send on from several threads; remembers when it broke."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._lock = threading.Lock()
        self.closed = False  # the server is gone

    def send(self, message: object) -> bool:
        """Send; False when the server is gone (the caller then exits)."""
        with self._lock:
            if self.closed:
                return False
            try:
                self.connection.send(message)
            except (BrokenPipeError, EOFError, OSError):
                self.closed = True
                return False
        return True


def start_heartbeat(
    sender: ReportSender, instance_id: str, interval_s: float = HEARTBEAT_INTERVAL_S
) -> threading.Event:
    """Beat every `interval_s` until the returned event is set or the pipe breaks."""
    stop = threading.Event()

    def beat() -> None:
        message = Heartbeat(instance_id)
        while not stop.wait(interval_s) and sender.send(message):
            pass

    threading.Thread(target=beat, name=f"heartbeat-{instance_id}", daemon=True).start()
    return stop
