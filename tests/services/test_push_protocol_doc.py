"""The WebSocket protocol's AsyncAPI document (`docs/asyncapi.yaml`) against the code and against
what a running system really sends.

- the document is AsyncAPI 3 in shape, every `$ref` resolves, every client op and server frame
  type of `bourse.contracts.push_protocol` has its message;
- its schemas are what `docs/asyncapi_schemas.py` generates from the msgspec structs now;
- every example validates against its schema and decodes into the structs;
- `bourse up --processes 1` as a user runs it: clients subscribe to every public channel kind and,
  with member tokens, the private ones; two crossing orders (then an amend and a cancel) go over
  REST; every frame any connection receives must validate against the schema of its type or
  channel kind (no field the document does not list), and every kind the document says the
  pusher sends is seen, every error code the test provokes too, and the close codes 1003, 1009,
  4001, 4029; sequences have no gap; a resumed private feed repeats the live one; the example
  client (`examples/ws_client.py`) prints the market's ticker.

No `jsonschema` in the venv: `validate` below checks the draft-07 subset the document uses and
refuses any other keyword, so nothing is accepted unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bourse.contracts import push_protocol as p
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "asyncapi.yaml"
GENERATOR_PATH = ROOT / "docs" / "asyncapi_schemas.py"
EXAMPLE_CLIENT = ROOT / "examples" / "ws_client.py"

Json = dict[str, Any]

TYPE_MESSAGES = {
    "subscribed": "subscribed",
    "unsubscribed": "unsubscribed",
    "authenticated": "authenticated",
    "pong": "pong",
    "cancel_on_disconnect": "cancelOnDisconnectSet",
    "error": "error",
    "heartbeat": "heartbeat",
}
"""A server frame's `type` -> its message in the document."""
KIND_MESSAGES = {
    "trades": "trades",
    "ticker": "ticker",
    "kline": "kline",
    "orders": "orders",
    "my_trades": "myTrades",
    "balances": "balances",
}
"""A channel message's kind -> its message (depth: `depthSnapshot` / `depthUpdate`)."""
CLIENT_MESSAGES = {
    "subscribe": "subscribe",
    "unsubscribe": "unsubscribe",
    "auth": "auth",
    "ping": "ping",
    "cancel_on_disconnect": "cancelOnDisconnect",
}
DATA_STRUCTS: dict[str, type[msgspec.Struct]] = {
    "trades": p.TradesData,
    "depth": p.DepthData,
    "ticker": p.TickerData,
    "kline": p.KlineData,
    "orders": p.OrderData,
    "my_trades": p.MyTradeData,
    "balances": p.BalanceData,
}
SERVER_FRAME_DECODER = msgspec.json.Decoder(p.ServerFrame)
CHANNEL_MESSAGE_DECODER = msgspec.json.Decoder(p.ChannelMessage)


# ---------------------------------------------------------------------- the document


def load_document() -> Json:
    document: Json = yaml.safe_load(DOC_PATH.read_text())
    return document


def resolve(document: Json, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def channel_kind(frame: Json) -> str:
    return str(frame["channel"]).split("@")[0].split(".")[0]


def message_for(frame: Json) -> str:
    """The document's message for a frame the server sent, by its type or channel kind."""
    if "type" in frame:
        return TYPE_MESSAGES[frame["type"]]
    kind = channel_kind(frame)
    if kind == "depth":
        return "depthSnapshot" if frame["data"]["snapshot"] else "depthUpdate"
    return KIND_MESSAGES[kind]


def payload_schema(document: Json, message: str) -> Json:
    schema: Json = document["components"]["messages"][message]["payload"]
    return schema


def operation_messages(document: Json, action: str) -> set[str]:
    """The messages the pusher receives (`receive`) or sends (`send`, with the replies)."""
    names: set[str] = set()
    for operation in document["operations"].values():
        mine = [m["$ref"] for m in operation["messages"]]
        replies = [m["$ref"] for m in operation.get("reply", {}).get("messages", [])]
        if operation["action"] == action:
            names.update(mine)
        if action == "send":
            names.update(replies)
    return {ref.rsplit("/", 1)[1] for ref in names}


# ---------------------------------------------------------------------- a JSON Schema subset

ANNOTATIONS = {"title", "description", "default", "examples"}
TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class Invalid(AssertionError):
    pass


def validate(instance: Any, schema: Any, document: Json, where: str = "$", *, strict: bool = True) -> None:
    """Draft-07 validation of the keywords the document uses (any other is refused). `strict`:
    an object schema without `additionalProperties` takes no property it does not list (the
    server sends nothing undocumented)."""
    if schema is True or schema == {}:
        return
    if schema is False:
        raise Invalid(f"{where}: nothing is allowed here")
    unknown = set(schema) - ANNOTATIONS - CHECKS.keys() - {"additionalItems"}
    if unknown:
        raise ValueError(f"{where}: keywords the test does not check: {sorted(unknown)}")
    for keyword, check in CHECKS.items():
        if keyword in schema:
            check(instance, schema, document, where, strict)


def _ref(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    validate(instance, resolve(document, schema["$ref"]), document, where, strict=strict)


def _type(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if not any(TYPES[t](instance) for t in types):
        raise Invalid(f"{where}: {instance!r} is not {schema['type']}")


def _properties(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if not isinstance(instance, dict):
        return
    properties = schema["properties"]
    for key, value in instance.items():
        if key in properties:
            validate(value, properties[key], document, f"{where}.{key}", strict=strict)
    extra = set(instance) - set(properties)
    if extra and (schema.get("additionalProperties") is False or (strict and "type" in schema)):
        raise Invalid(f"{where}: properties the document does not list: {sorted(extra)}")


def _required(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if isinstance(instance, dict):
        missing = [key for key in schema["required"] if key not in instance]
        if missing:
            raise Invalid(f"{where}: missing {missing}")


def _additional(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if isinstance(instance, dict) and schema["additionalProperties"] is False:
        extra = set(instance) - set(schema.get("properties", {}))
        if extra:
            raise Invalid(f"{where}: unknown properties {sorted(extra)}")


def _enum(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if not any(instance == v and type(instance) is type(v) for v in schema["enum"]):
        raise Invalid(f"{where}: {instance!r} not one of {schema['enum']}")


def _const(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if not (instance == schema["const"] and type(instance) is type(schema["const"])):
        raise Invalid(f"{where}: {instance!r} is not {schema['const']!r}")


def _any_of(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    failures = []
    for option in schema["anyOf"]:
        try:
            validate(instance, option, document, where, strict=strict)
            return
        except Invalid as exc:
            failures.append(str(exc))
    raise Invalid(f"{where}: no option of anyOf matches: {failures}")


def _all_of(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    for part in schema["allOf"]:
        validate(instance, part, document, where, strict=strict)


def _items(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if not isinstance(instance, list):
        return
    items = schema["items"]
    if isinstance(items, list):
        for i, (value, item) in enumerate(zip(instance, items, strict=False)):
            validate(value, item, document, f"{where}[{i}]", strict=strict)
        if len(instance) > len(items) and schema.get("additionalItems") is False:
            raise Invalid(f"{where}: more items than {len(items)}")
    else:
        for i, value in enumerate(instance):
            validate(value, items, document, f"{where}[{i}]", strict=strict)


Check = Callable[[Any, Json, Json, str, bool], None]


def _bound(
    keyword: str,
    measure: Callable[[Any], Any],
    applies: Callable[[Any], bool],
    ok: Callable[[Any, Any], bool],
) -> Check:
    def check(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
        if applies(instance) and not ok(measure(instance), schema[keyword]):
            raise Invalid(f"{where}: {instance!r} fails {keyword} {schema[keyword]}")

    return check


def _is_number(v: Any) -> bool:
    return TYPES["number"](v)


def _pattern(instance: Any, schema: Json, document: Json, where: str, strict: bool) -> None:
    if isinstance(instance, str) and not re.search(schema["pattern"], instance):
        raise Invalid(f"{where}: {instance!r} does not match {schema['pattern']}")


CHECKS: dict[str, Check] = {
    "$ref": _ref,
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "enum": _enum,
    "const": _const,
    "anyOf": _any_of,
    "allOf": _all_of,
    "items": _items,
    "pattern": _pattern,
    "minItems": _bound("minItems", len, lambda v: isinstance(v, list), lambda n, b: n >= b),
    "maxItems": _bound("maxItems", len, lambda v: isinstance(v, list), lambda n, b: n <= b),
    "minLength": _bound("minLength", len, lambda v: isinstance(v, str), lambda n, b: n >= b),
    "maxLength": _bound("maxLength", len, lambda v: isinstance(v, str), lambda n, b: n <= b),
    "minimum": _bound("minimum", lambda v: v, _is_number, lambda n, b: n >= b),
    "maximum": _bound("maximum", lambda v: v, _is_number, lambda n, b: n <= b),
}


def check_server_frame(document: Json, frame: Json) -> str:
    """Validate a frame the pusher sent against its message's schema and decode it into the
    structs; returns the message's name."""
    name = message_for(frame)
    validate(frame, payload_schema(document, name), document, f"{name}")
    raw = json.dumps(frame).encode()
    if "type" in frame:
        SERVER_FRAME_DECODER.decode(raw)
    else:
        message = CHANNEL_MESSAGE_DECODER.decode(raw)
        msgspec.convert(message.data, DATA_STRUCTS[channel_kind(frame)])
    return name


# ---------------------------------------------------------------------- the document alone


def test_the_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    document = load_document()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"]
    assert document["info"]["version"]
    assert document["defaultContentType"] == "application/json"
    assert document["servers"] == {
        "local": {
            "host": "localhost:8002",
            "protocol": "ws",
            "title": "bourse up",
            "description": document["servers"]["local"]["description"],
        }
    }
    connection = document["channels"]["connection"]
    assert connection["address"] == "/ws"
    for ref in refs(document):
        assert resolve(document, ref) is not None, ref
    # every operation is on the connection and names messages of its channel
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        assert operation["channel"] == {"$ref": "#/channels/connection"}, name
        for message in [*operation["messages"], *operation.get("reply", {}).get("messages", [])]:
            assert message["$ref"].startswith("#/channels/connection/messages/"), (name, message)
    messages = document["components"]["messages"]
    assert set(connection["messages"]) == set(messages)
    received, sent = operation_messages(document, "receive"), operation_messages(document, "send")
    assert received == set(CLIENT_MESSAGES.values())
    assert sent == set(TYPE_MESSAGES.values()) | set(KIND_MESSAGES.values()) | {
        "depthSnapshot",
        "depthUpdate",
    }
    assert received | sent == set(messages)
    # every client op and server frame type of the protocol module is documented
    ops = {
        s.__struct_config__.tag for s in (p.Subscribe, p.Unsubscribe, p.Auth, p.Ping, p.CancelOnDisconnect)
    }
    assert ops == set(CLIENT_MESSAGES)
    types = {s.__struct_config__.tag for s in p.ServerFrame.__args__}
    assert types == set(TYPE_MESSAGES)
    for name, message in messages.items():
        assert message["payload"]["$ref"].startswith("#/components/schemas/"), name
        assert message.get("examples"), f"{name} has no example"
    description = document["info"]["description"]
    for fact in ("1003", "1009", "4001", "4008", "4029", "64 KiB", "prev_sequence", "resume", "position"):
        assert fact in description, fact


def test_the_schemas_are_generated_from_the_structs_as_they_are_now() -> None:
    spec = importlib.util.spec_from_file_location("asyncapi_schemas", GENERATOR_PATH)
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    render: Callable[[str], str] = generator.render
    text = DOC_PATH.read_text()
    assert render(text) == text, (
        "docs/asyncapi.yaml is out of date: run .venv/bin/python docs/asyncapi_schemas.py"
    )


def test_every_example_validates_and_decodes_into_the_structs() -> None:
    document = load_document()
    received = operation_messages(document, "receive")
    for name, message in document["components"]["messages"].items():
        for example in message["examples"]:
            frame = example["payload"]
            validate(frame, message["payload"], document, name)
            if name in received:
                decoded = p.CLIENT_FRAME_DECODER.decode(json.dumps(frame).encode())
                assert CLIENT_MESSAGES[decoded.__struct_config__.tag] == name
            else:
                assert check_server_frame(document, frame) == name


@pytest.mark.parametrize(
    ("message", "frame"),
    [
        ("subscribe", {"op": "subscribe"}),
        ("subscribe", {"op": "subscribe", "channels": []}),
        ("subscribe", {"op": "subscribe", "channels": ["ticker.btc_usd"], "extra": 1}),
        ("auth", {"op": "auth", "token": "t", "resume": {"events": -1}}),
        ("error", {"type": "error", "code": "no_such_code", "message": "m"}),
        ("trades", {"channel": "orders", "seq": 1, "data": {"market": "btc_usd", "trades": []}}),
        ("trades", {"channel": "trades.btc_usd", "seq": 1, "data": {"market": "btc_usd", "trades": []}}),
        ("orders", {"channel": "orders", "seq": 1, "data": {"event": "accepted", "order_id": "1",
                                                            "market": "btc_usd", "time": 1}}),
        ("depthUpdate", {"channel": "depth.btc_usd@100ms", "seq": 1, "data": {
            "market": "btc_usd", "snapshot": True, "sequence": 1, "prev_sequence": 0, "bids": [],
            "asks": []}}),
        ("depthUpdate", {"channel": "depth.btc_usd@100ms", "seq": 1, "data": {
            "market": "btc_usd", "snapshot": False, "sequence": 1, "prev_sequence": 0,
            "bids": [["1", "2", "3"]], "asks": []}}),
        ("heartbeat", {"type": "heartbeat", "time": 1, "extra": True}),
    ],
)  # fmt: skip
def test_the_validation_refuses_what_the_document_does_not_allow(message: str, frame: Json) -> None:
    document = load_document()
    with pytest.raises(Invalid):
        validate(frame, payload_schema(document, message), document, message)


# ---------------------------------------------------------------------- against a running system


class Peer:
    """One client connection: sends documented frames, records every frame it receives and its
    close code."""

    def __init__(self, name: str, ws: ClientConnection, document: Json) -> None:
        self.name = name
        self.ws = ws
        self.document = document
        self.frames: list[Json] = []
        self.close_code: int | None = None
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, name: str, url: str, document: Json) -> Peer:
        return cls(name, await connect(url, max_size=None), document)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), f"{self.name}: a binary frame"
                self.frames.append(json.loads(raw))
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code or 1006

    async def send(self, frame: Json) -> None:
        """A frame of the protocol: it must validate against the document first."""
        message = CLIENT_MESSAGES[frame["op"]]
        validate(frame, payload_schema(self.document, message), self.document, message)
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def wait_for(self, what: str, check: Callable[[Json], bool], timeout: float = 10.0) -> Json:
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if check(frame):
                    return frame
            assert time.monotonic() < deadline, f"{self.name}: no {what} in {self.frames}"
            await asyncio.sleep(0.05)

    async def answer(self, request_id: object, timeout: float = 10.0) -> Json:
        return await self.wait_for(
            f"answer to {request_id!r}", lambda f: "type" in f and f.get("id") == request_id
        )

    async def closed(self, timeout: float = 10.0) -> int:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        assert self.close_code is not None, f"{self.name}: not closed after {timeout} s"
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


def channel_frames(frames: list[Json], channel: str) -> list[Json]:
    return [f for f in frames if f.get("channel") == channel]


def on(channel: str) -> Callable[[Json], bool]:
    return lambda frame: frame.get("channel") == channel


def errors(peer: Peer) -> dict[str, Json]:
    return {f["code"]: f for f in peer.frames if f.get("type") == "error"}


def start_bourse(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str], dict[str, str]]:
    """`bourse up --processes 1` on free ports; its environment and the banner's links."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(
        BOURSE_DATA_DIR=str(tmp_path),
        BOURSE_HTTP_PORT=str(free_port()),
        BOURSE_PUSHER_PORT=str(free_port()),
        BOURSE_HEALTH_PORT=str(free_port()),
        BOURSE_EMBEDDED_NATS_PORT=str(free_port()),
        BOURSE_EMBEDDED_NATS_MONITOR_PORT=str(free_port()),
        BOURSE_PUSHER_IDLE_TIMEOUT_S="1",  # to see 4001 at the first heartbeat tick
        BOURSE_PUSHER_MAX_SUBSCRIPTIONS="12",  # the demo's 3 markets offer only 42 channels
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "up", "--processes", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    links: dict[str, str] = {}
    for _ in range(12):
        line = process.stdout.readline()
        if not line or line.startswith("Press Ctrl-C"):
            break
        if line.startswith("  "):
            label, _, url = line.strip().rpartition(" ")
            links[label.strip()] = url
    return process, env, links


def token(env: dict[str, str], member: int, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bourse", "token", str(member), *options],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError, KeyError):
            if await check():
                return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


PUBLIC = [
    "trades.btc_usd@100ms",
    "trades.btc_usd",
    "depth.btc_usd@100ms",
    "depth.btc_usd",
    "ticker.btc_usd",
    "kline.1m.btc_usd",
]
PRIVATE = ["orders", "my_trades", "balances"]
EXPECTED_ERRORS = {
    10: "unknown_channel",
    11: "unknown_market",
    12: "unknown_period",
    13: "unknown_speed",
    14: "not_authenticated",
    15: "not_authenticated",
    17: "malformed_token",
    18: "bad_signature",
    19: "expired_token",
    20: "too_many_subscriptions",
    22: "member_changed",
}
"""The refusals the test provokes: request id -> error code."""


@pytest.mark.slow
async def test_every_frame_the_pusher_sends_is_documented(tmp_path: Path) -> None:
    document = load_document()
    process, env, links = start_bourse(tmp_path)
    peers: list[Peer] = []
    try:
        ws_url, api = links["websocket"], links["api"]
        health_url = links["health"]
        alice_token, bob_token = token(env, 1), token(env, 2)
        expired_token = token(env, 1, "--ttl", "-60")
        async with httpx.AsyncClient(base_url=api, timeout=10.0) as http:
            alice = {"Authorization": f"Bearer {alice_token}"}
            bob = {"Authorization": f"Bearer {bob_token}"}

            async def ready() -> bool:
                health = (await http.get(health_url)).json()
                balances = (await http.get("/balances", headers=bob)).json()
                return bool(balances) and "btc_usd" in health["services"]["pusher"]["depth_loaded"]

            await wait_until(ready, "bourse up, its demo balances and the pusher's depth")

            async def peer(name: str) -> Peer:
                opened = await Peer.open(name, ws_url, document)
                peers.append(opened)
                return opened

            # a member's connection: every public channel kind, then the private ones
            main = await peer("main")
            idle = await peer("idle")  # says nothing: closed 4001 at a heartbeat tick
            await main.send({"op": "subscribe", "id": 1, "channels": PUBLIC})
            subscribed = await main.answer(1)
            assert subscribed["channels"] == [
                "trades.btc_usd@100ms", "trades.btc_usd@1000ms", "depth.btc_usd@100ms",
                "depth.btc_usd@1000ms", "ticker.btc_usd@1000ms", "kline.1m.btc_usd@1000ms",
            ]  # fmt: skip
            await main.send({"op": "auth", "id": 2, "token": alice_token})
            authenticated = await main.answer(2)
            assert authenticated["type"] == "authenticated"
            assert authenticated["member_id"] == 1
            await main.send({"op": "subscribe", "id": 3, "channels": PRIVATE})
            assert (await main.answer(3))["channels"] == PRIVATE
            await main.send({"op": "ping", "id": "p"})
            await main.send({"op": "cancel_on_disconnect", "id": 4, "enabled": False})
            await main.send({"op": "unsubscribe", "id": 5, "channels": ["depth.btc_usd"]})
            assert (await main.answer("p"))["type"] == "pong"
            assert (await main.answer(4))["type"] == "cancel_on_disconnect"
            assert (await main.answer(5))["channels"] == ["depth.btc_usd@1000ms"]

            # refusals: each a documented error code, the connection goes on
            bad = await peer("refusals")
            await bad.send({"op": "subscribe", "id": 10, "channels": ["candles.btc_usd"]})
            await bad.send({"op": "subscribe", "id": 11, "channels": ["trades.nowhere"]})
            await bad.send({"op": "subscribe", "id": 12, "channels": ["kline.2m.btc_usd"]})
            await bad.send({"op": "subscribe", "id": 13, "channels": ["ticker.btc_usd@100ms"]})
            await bad.send({"op": "subscribe", "id": 14, "channels": ["orders"]})
            await bad.send({"op": "cancel_on_disconnect", "id": 15, "enabled": True})
            await bad.send_raw("not json")
            await bad.send_raw(json.dumps({"op": "shout", "id": 16}))
            await bad.send({"op": "auth", "id": 17, "token": "not-a-jwt"})
            head, payload, signature = alice_token.split(".")
            forged = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
            await bad.send({"op": "auth", "id": 18, "token": f"{head}.{payload}.{forged}"})
            await bad.send({"op": "auth", "id": 19, "token": expired_token})
            many = [
                f"kline.{period}.{m}" for period in ("1m", "5m", "1h", "1d") for m in ("btc_usd", "eth_usd")
            ]
            await bad.send({"op": "subscribe", "id": 20, "channels": many + PUBLIC})
            await bad.send({"op": "auth", "id": 21, "token": bob_token})
            await bad.send({"op": "auth", "id": 22, "token": alice_token})
            await bad.answer(22)
            for request, code in EXPECTED_ERRORS.items():
                answer = await bad.answer(request)
                assert (answer["type"], answer["code"]) == ("error", code), answer
            assert [f["code"] for f in bad.frames if f.get("type") == "error" and "id" not in f] == [
                "invalid_frame",
                "invalid_frame",
            ]
            assert errors(bad)["unknown_market"]["channel"] == "trades.nowhere"
            assert (await bad.answer(21))["type"] == "authenticated"

            # a token that expires while connected
            expiring = await peer("expiring")
            short_token = token(env, 1, "--ttl", "1")  # accepted (within the leeway), then expires
            await expiring.send({"op": "auth", "id": 1, "token": short_token})
            await expiring.send({"op": "subscribe", "id": 2, "channels": ["balances"]})
            await expiring.wait_for("token_expired", lambda f: f.get("code") == "token_expired", timeout=10)
            await expiring.send({"op": "subscribe", "id": 3, "channels": ["orders"]})
            assert (await expiring.answer(3))["code"] == "not_authenticated"

            # two crossing orders, then the rest amended and cancelled
            order = {"market": "btc_usd", "type": "limit"}
            sell = await http.post(
                "/order", headers=alice, json={**order, "side": "sell", "price": "50000", "amount": "0.5"}
            )
            assert sell.status_code == 201, sell.text
            buy = await http.post(
                "/order", headers=bob, json={**order, "side": "buy", "price": "50100", "amount": "0.2"}
            )
            assert buy.status_code == 201, buy.text
            assert buy.json()["status"] == "executed", buy.text
            sell_id = sell.json()["id"]
            amended = await http.patch(f"/order/{sell_id}", headers=alice, json={"price": "51000"})
            assert amended.status_code == 200, amended.text
            cancelled = await http.delete(f"/order/{sell_id}", headers=alice)
            assert cancelled.status_code == 200, cancelled.text

            def order_event(event: str) -> Callable[[Json], bool]:
                return lambda f: f.get("channel") == "orders" and f["data"]["event"] == event

            await main.wait_for("order closed", order_event("closed"))
            await main.wait_for(
                "a ticker with the trade",
                lambda f: f.get("channel") == "ticker.btc_usd@1000ms" and f["data"]["last"] == "50000.00",
            )
            for channel in ("trades.btc_usd@100ms", "trades.btc_usd@1000ms", "kline.1m.btc_usd@1000ms"):
                await main.wait_for(channel, on(channel))
            await main.wait_for(
                "a depth update",
                lambda f: f.get("channel") == "depth.btc_usd@100ms" and not f["data"]["snapshot"],
            )
            await main.wait_for("my trade", lambda f: f.get("channel") == "my_trades")
            events = [f["data"]["event"] for f in channel_frames(main.frames, "orders")]
            assert events == ["accepted", "updated", "amended", "closed"], events

            # after a reconnect: the private feed resumed from the start repeats the live one
            resumed = await peer("resumed")
            await resumed.send(
                {"op": "auth", "id": 1, "token": alice_token, "resume": {"events": 0, "accounts": 0}}
            )
            await resumed.wait_for("the replayed close", order_event("closed"))
            for kind in ("orders", "my_trades"):
                live = [f["data"] for f in channel_frames(main.frames, kind)]
                replayed = [f["data"] for f in channel_frames(resumed.frames, kind)]
                assert replayed == live, kind

            # the example client prints the market's ticker
            example = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLE_CLIENT),
                "--url", ws_url, "--token", alice_token, "--seconds", "3",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(example.communicate(), 30)
            printed = out.decode()
            assert example.returncode == 0, err.decode()
            assert "ticker btc_usd: last 50000.00" in printed, printed
            assert "depth btc_usd @" in printed, printed
            assert "authenticated as member 1" in printed, printed

            # heartbeats, and the idle connection closed at a tick
            await main.wait_for("a heartbeat", lambda f: f.get("type") == "heartbeat", timeout=25)
            assert await idle.closed(timeout=25) == 4001

            # frames the pusher refuses with a close code
            binary = await peer("binary")
            await binary.send_raw(b"\x00binary")
            assert await binary.closed() == 1003
            huge = await peer("huge")
            await huge.send_raw(json.dumps({"op": "ping", "id": "x" * (65 * 1024)}))
            assert await huge.closed() == 1009

            # past the connections per address per second: an error, then 4029
            burst: list[Peer] = []
            for _ in range(80):
                burst.append(await peer(f"burst{len(burst)}"))
                if burst[-1].frames or burst[-1].close_code:
                    break
            refused = await burst[-1].wait_for("too_many_connections", lambda f: f.get("type") == "error")
            assert refused["code"] == "too_many_connections"
            assert await burst[-1].closed() == 4029

        # every frame any connection received is the document's
        seen: set[str] = set()
        for each in peers:
            for frame in each.frames:
                try:
                    seen.add(check_server_frame(document, frame))
                except (Invalid, msgspec.ValidationError) as exc:
                    raise AssertionError(f"{each.name}: {frame}: {exc}") from exc
        assert seen == operation_messages(document, "send"), "documented but never seen"
        codes = {f["code"] for each in peers for f in each.frames if f.get("type") == "error"}
        assert codes == {*EXPECTED_ERRORS.values(), "invalid_frame", "token_expired", "too_many_connections"}
        # sequences: +1 per message of a channel on a connection, no gap
        for each in peers:
            by_channel: dict[str, list[int]] = {}
            for frame in each.frames:
                if "channel" in frame and "type" not in frame:
                    by_channel.setdefault(frame["channel"], []).append(frame["seq"])
            for channel, seqs in by_channel.items():
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (each.name, channel, seqs)
                if channel in PRIVATE:
                    assert seqs[0] == 1, (each.name, channel, seqs)
        # depth: the sequence rule holds for the 100 ms subscriber
        book_at: int | None = None
        for frame in channel_frames(main.frames, "depth.btc_usd@100ms"):
            data = frame["data"]
            if data["snapshot"]:
                assert data["prev_sequence"] == data["sequence"]
                book_at = data["sequence"]
            else:
                assert book_at is not None, data
                assert data["prev_sequence"] <= book_at < data["sequence"], data
                book_at = data["sequence"]
    finally:
        for each in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(each.close(), 5)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
