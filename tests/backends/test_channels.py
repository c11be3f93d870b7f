"""An instance's channels over TCP (`backends/channels.py`), with real sockets on loopback: the
two connections of one token reach their handle, which the instance then talks to both ways; a
wrong key or token is refused, and a silent peer holds up no one; a handle killed before its
instance connects closes the late connections; the backend names are the CLI's."""

from __future__ import annotations

import socket
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from typing import Any

import pytest

from hyperflexis.backends.base import InstanceHandle
from hyperflexis.backends.channels import ChannelListener, connect_back
from hyperflexis.backends.local import LocalProcess
from hyperflexis.backends.messages import AbortRequest, Heartbeat
from hyperflexis.backends.registry import BACKENDS
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.server.config import BACKEND_NAMES

WHERE = ("node-a", "127.0.0.1", 4242)


class _Process(LocalProcess):
    """A process part that is never started: the channels are what is tested."""

    def __init__(self) -> None:
        pass


def _handle() -> InstanceHandle:
    handle = InstanceHandle(InstanceSpec("i0", None, "fcfs"), _Process(), None, None)
    handle.start_sender()
    return handle


def _listen(listener: ChannelListener, handle: InstanceHandle) -> tuple[str, threading.Event]:
    token, done = listener.expect(), threading.Event()
    seen: list[Any] = []

    def make(where: Any) -> InstanceHandle:
        seen.append(where)
        return handle

    listener.on(token, make, lambda h: done.set())
    return token, done


def test_an_instance_connects_back_and_both_channels_work() -> None:
    listener = ChannelListener("127.0.0.1")
    try:
        handle = _handle()
        handle.send(AbortRequest("queued-before-connect"))  # waits in the outbox
        token, done = _listen(listener, handle)
        commands, reports = connect_back(listener.address, listener.authkey, token, WHERE)
        assert done.wait(10) and handle.connected.is_set()
        assert commands.poll(10) and commands.recv() == AbortRequest("queued-before-connect")
        reports.send(Heartbeat("i0"))
        assert handle.reports is not None and handle.reports.poll(10)
        assert handle.reports.recv() == Heartbeat("i0")
        handle.send(None)
        handle.close_channels()
        assert commands.poll(10)  # the server's end closed: EOF
        with pytest.raises(EOFError):
            commands.recv()
    finally:
        listener.close()


def test_a_wrong_key_a_wrong_token_or_silence_is_refused_and_the_listener_goes_on() -> None:
    listener = ChannelListener("127.0.0.1")
    try:
        with pytest.raises(AuthenticationError):
            Client(listener.address, authkey=b"not the key")
        stranger = Client(listener.address, authkey=listener.authkey)
        stranger.send(("no-such-token", "commands", WHERE))
        assert stranger.poll(10)  # closed by the listener
        with pytest.raises(EOFError):
            stranger.recv()
        silent = socket.create_connection(listener.address)  # connects, never says a word
        handle = _handle()  # and a real instance still gets in
        token, done = _listen(listener, handle)
        connect_back(listener.address, listener.authkey, token, WHERE)
        assert done.wait(10)
        handle.send(None)
        handle.close_channels()
        silent.close()
    finally:
        listener.close()


def test_a_handle_killed_before_its_instance_connects_closes_the_late_channels() -> None:
    listener = ChannelListener("127.0.0.1")
    try:
        handle = _handle()
        token, done = _listen(listener, handle)
        handle.close_channels()  # killed while its actor was still being placed
        commands, _ = connect_back(listener.address, listener.authkey, token, WHERE)
        assert commands.poll(10)
        with pytest.raises(EOFError):
            commands.recv()
        assert not done.is_set()
    finally:
        listener.close()


def test_the_registry_has_the_backends_the_cli_offers() -> None:
    assert tuple(BACKENDS.names()) == BACKEND_NAMES
