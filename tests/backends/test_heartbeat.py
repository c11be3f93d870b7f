"""The instance's heartbeat: beats from its own thread while the sender is otherwise idle, shares
the pipe safely with other senders, and stops when told or when the server is gone."""

from __future__ import annotations

import multiprocessing
import threading

from hyperflexis.backends.heartbeat import ReportSender, start_heartbeat
from hyperflexis.backends.messages import Heartbeat

WAIT_S = 10.0  # a bound on waiting, never a sleep


def test_beats_until_stopped_and_interleaves_whole_messages() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = ReportSender(writer)
    stop = start_heartbeat(sender, "i0", interval_s=0.01)
    others = threading.Thread(target=lambda: [sender.send(("report", i)) for i in range(200)])
    others.start()
    others.join(WAIT_S)
    received = []
    while len([m for m in received if isinstance(m, Heartbeat)]) < 3:
        assert reader.poll(WAIT_S), "no heartbeat"
        received.append(reader.recv())  # every message arrives whole: the lock holds
    assert [m for m in received if isinstance(m, tuple)] == [("report", i) for i in range(200)]
    stop.set()
    while reader.poll(0.2):  # at most one beat was in flight when it stopped
        assert isinstance(reader.recv(), Heartbeat)


def test_a_closed_pipe_ends_the_beat() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = ReportSender(writer)
    reader.close()
    start_heartbeat(sender, "i0", interval_s=0.01)
    deadline = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if sender.closed:
            break
        deadline.wait(0.01)
    assert sender.closed and not sender.send(Heartbeat("i0"))
