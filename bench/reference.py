"""The reference server: the ceiling of Python HTTP on this machine.

A minimal HTTP/1.1 server straight on asyncio's Protocol, with `httptools` and `uvloop`,
answering the benchmark's paths with the same bytes as the real server (head and body,
captured from it at start-up by `bench/run.py` and passed in a JSON file):

- `GET /tasks/{id}` and `POST /tasks`: the captured responses;
- `GET /tasks/{id}/events`: the captured first event, then the connection is held;
- `POST /finish`: sends the captured final event, with `finished_at` set to now, to every
  held stream and closes them (the ceiling for "task finishes -> waiters hear it").

Usage: python bench/reference.py PORT RESPONSES.json
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from typing import Any, ClassVar

import httptools
import uvloop


class Reference(asyncio.Protocol):
    held: ClassVar[set[Reference]] = set()
    replies: ClassVar[dict[str, bytes]] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_lost(self, exc: Exception | None) -> None:
        Reference.held.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        method, url = self.parser.get_method(), self.url
        if method == b"POST" and url == b"/finish":
            finish()
            self.transport.write(self.replies["finished"])
        elif method == b"POST":
            self.transport.write(self.replies["post"])
        elif url.endswith(b"/events"):
            self.transport.write(self.replies["events_head"] + self.replies["event_first"])
            Reference.held.add(self)
        else:
            self.transport.write(self.replies["get"])


def finish() -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
    replies = Reference.replies
    event = replies["event_final"].replace(replies["finished_at"], now)  # same length
    for stream in Reference.held:
        stream.transport.write(event + b"0\r\n\r\n")
        stream.transport.close()
    Reference.held.clear()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Reference, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with open(sys.argv[2], encoding="utf-8") as file:
        Reference.replies = {k: v.encode("latin-1") for k, v in json.load(file).items()}
    Reference.replies["finished"] = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"
    uvloop.run(main(int(sys.argv[1])))
