"""A TCP proxy on loopback to a real server elsewhere, for what a network can do to a service:
come up late (nothing listens on its port until `start`, and a service pointed there sees the
server appear exactly then), hang (once frozen, bytes stop moving both ways and are held, never
delivered), and drop (`cut` aborts every connection with what it held; new ones are carried
again). It runs its own event loop in a thread, so the test's loop may block (say, waiting for a
process) without stalling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Self

from services.devstack.ports import LocalServer

_CHUNK = 65536


class TcpProxy(LocalServer):
    """Listens on `port` (0: any free one) once started; forwards to `target_port`, or to what
    `forward_to` names later (until then connections are refused at once)."""

    def __init__(
        self, port: int = 0, target_port: int | None = None, target_host: str = "127.0.0.1"
    ) -> None:
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._upstream = (target_host, target_port) if target_port is not None else None
        self._flowing: asyncio.Event | None = None
        # Every connection's pumps (one per direction) and both of its ends.
        self._pumps: set[asyncio.Task[None]] = set()
        self._ends: set[asyncio.StreamWriter] = set()
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Listening once this returns (clients may be told the port)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen()
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, started), name="tcp-proxy", daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def forward_to(self, port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, port)

    def freeze(self) -> None:
        """From now on nothing more crosses, in either direction, on any connection."""
        self._call(lambda: self._event().clear())

    def cut(self) -> None:
        """Drop every connection and whatever it held (none of it is ever delivered), then
        carry new connections again."""

        def cut_and_thaw() -> None:
            for pump in self._pumps:
                pump.cancel()
            for end in self._ends:
                end.transport.abort()
            self._pumps.clear()
            self._ends.clear()
            self._event().set()

        self._call(cut_and_thaw)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self.cut()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
        self._loop = self._thread = self._socket = None

    def _event(self) -> asyncio.Event:
        assert self._flowing is not None
        return self._flowing

    def _call(self, action: object) -> None:
        """Run `action` on the proxy's loop and wait until it has run."""
        assert self._loop is not None and callable(action)
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the proxy's loop did not answer")

    def _serve(self, sock: socket.socket, started: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)

        async def open_server() -> asyncio.Server:
            self._flowing = asyncio.Event()
            self._flowing.set()
            return await asyncio.start_server(self._accept, sock=sock)

        server = self._loop.run_until_complete(open_server())
        started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._upstream is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._ends |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink, writer, up_writer))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *ends: asyncio.StreamWriter,
    ) -> None:
        try:
            while chunk := await source.read(_CHUNK):
                await self._event().wait()  # frozen: held here, and dropped by a cut
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in ends:  # one direction closed: the connection is over
                end.transport.abort()
                self._ends.discard(end)
