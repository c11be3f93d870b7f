"""An instance's two channels over TCP, for instances the server did not fork (Ray actors): the
server listens (`ChannelListener`, an authenticated `multiprocessing.connection.Listener`), the
instance connects twice (`connect_back`), saying which instance and which channel each is.

The connections are the same `Connection` objects as a pipe's ends, so the instance loop and the
pool read and write them unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Client,
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from typing import Any

from hyperflexis.backends.base import ConnectedHandler, InstanceHandle

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0  # a connection that names no instance by then is dropped
COMMANDS, REPORTS = "commands", "reports"
Where = tuple[str, str, int]  # (node id, node address, pid) of the connecting instance


def connect_back(
    address: tuple[str, int], authkey: bytes, token: str, where: Where
) -> tuple[Connection, Connection]:
    """The instance's side: its command connection (it reads) and report connection (it
    writes), each introduced by `(token, channel, where)`."""
    commands = Client(address, authkey=authkey)
    commands.send((token, COMMANDS, where))
    reports = Client(address, authkey=authkey)
    reports.send((token, REPORTS, where))
    return commands, reports


class ChannelListener:
    """Accepts instances' connections on a thread and pairs them with their handles."""

    def __init__(self, host: str) -> None:
        self.authkey = secrets.token_bytes(32)
        self._listener = Listener((host, 0))  # each connection is authenticated in `_admit`
        self.address: tuple[str, int] = self._listener.address  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._expected: set[str] = set()
        self._waiting: dict[str, tuple[Callable[[Where], InstanceHandle], ConnectedHandler]] = {}
        self._halves: dict[str, dict[str, Connection]] = {}
        self._where: dict[str, Where] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hf-channels", daemon=True)
        self._thread.start()

    def expect(self) -> str:
        """A new token for one instance's two connections."""
        token = secrets.token_hex(16)
        with self._lock:
            self._expected.add(token)
        return token

    def on(
        self, token: str, make: Callable[[Where], InstanceHandle], done: ConnectedHandler
    ) -> None:
        """When `token`'s two connections are in: `make(where)` gives its handle, which gets
        them, then `done(handle)`."""
        with self._lock:
            self._waiting[token] = (make, done)
        self._pair(token)

    def _accept(self) -> None:
        """Take connections; each is admitted on a thread of its own, so that a peer that
        connects and says nothing holds up no one."""
        while not self._closing.is_set():
            try:
                conn = self._listener.accept()  # no handshake here: `_admit` does it
            except OSError:
                if self._closing.is_set():
                    return
                continue
            if self._closing.is_set():  # `close` woke us
                conn.close()
                return
            threading.Thread(target=self._admit, args=(conn,), daemon=True).start()

    def _admit(self, conn: Connection) -> None:
        """The authkey handshake (as an authenticated Listener's), then the hello naming the
        instance and the channel; anything else closes the connection."""
        try:
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
            if not conn.poll(HELLO_TIMEOUT_S):
                raise EOFError("no hello")
            hello: Any = conn.recv()
            token, channel, where = hello
        except (OSError, EOFError, AuthenticationError, ValueError, TypeError) as exc:
            logger.warning("instance channel refused: %s", exc)
            conn.close()
            return
        with self._lock:
            if token not in self._expected or channel not in (COMMANDS, REPORTS):
                conn.close()
                return
            self._halves.setdefault(token, {})[channel] = conn
            self._where[token] = where
        self._pair(token)

    def _pair(self, token: str) -> None:
        with self._lock:
            halves = self._halves.get(token, {})
            if token not in self._waiting or COMMANDS not in halves or REPORTS not in halves:
                return
            make, done = self._waiting.pop(token)
            del self._halves[token]
            self._expected.discard(token)
            where = self._where.pop(token)
        handle = make(where)
        if handle.connect(halves[COMMANDS], halves[REPORTS]):
            done(handle)

    def close(self) -> None:
        """Stop accepting; close connections never paired with a handle."""
        self._closing.set()
        with contextlib.suppress(OSError, EOFError, AuthenticationError):  # wake `_accept`
            Client(self.address, authkey=self.authkey).close()
        self._thread.join(5.0)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for halves in self._halves.values():
                for conn in halves.values():
                    conn.close()
            self._halves.clear()
