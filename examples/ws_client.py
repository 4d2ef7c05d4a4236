"""Watch a market over bourse's WebSocket (the protocol: docs/asyncapi.yaml) and print what comes.

    .venv/bin/python examples/ws_client.py                       # btc_usd on ws://127.0.0.1:8002/ws
    .venv/bin/python examples/ws_client.py --market eth_usd --token "$(.venv/bin/bourse token 1)"

It subscribes to the market's ticker, trades and depth at 100 ms and keeps a local order book by
the depth sequence rule: a snapshot replaces the book; an update whose `sequence` is not past the
book's is dropped, one whose `prev_sequence` the book has reached is applied, and any other (or a
gap in the channel's `seq`) means one was missed: subscribe again (to the channel held) for a
fresh snapshot. With `--token` (a member JWT, as for the REST API) it also authenticates and follows
the member's orders, trades and balances, printing the private `position` to resume from after a
reconnect (`auth` with `resume`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Levels = dict[Decimal, Decimal]


class LocalBook:
    """The market's depth as the `depth` channel leaves it, at `sequence` (None: no snapshot yet)."""

    def __init__(self) -> None:
        self.bids: Levels = {}
        self.asks: Levels = {}
        self.sequence: int | None = None

    def on_depth(self, data: dict[str, Any]) -> bool:
        """Apply one `depth` message's data; False if an update was missed."""
        if data["snapshot"]:
            self.bids, self.asks, self.sequence = {}, {}, data["sequence"]
        elif self.sequence is None or data["sequence"] <= self.sequence:
            return True  # before a snapshot, or already in the book
        elif data["prev_sequence"] > self.sequence:
            self.sequence = None
            return False
        for side, levels in ((self.bids, data["bids"]), (self.asks, data["asks"])):
            for price, amount in levels:
                if Decimal(amount):
                    side[Decimal(price)] = Decimal(amount)
                else:
                    side.pop(Decimal(price), None)
        self.sequence = data["sequence"]
        return True

    def top(self) -> str:
        bid = max(self.bids, default=None)
        ask = min(self.asks, default=None)
        best_bid = f"{self.bids[bid]} @ {bid}" if bid is not None else "-"
        best_ask = f"{self.asks[ask]} @ {ask}" if ask is not None else "-"
        return f"bid {best_bid} | ask {best_ask} ({len(self.bids)}+{len(self.asks)} levels)"


def show(text: str) -> None:
    print(text, flush=True)


async def send(ws: ClientConnection, op: str, **fields: Any) -> None:
    await ws.send(json.dumps({"op": op, **fields}))


async def watch(url: str, market: str, token: str | None) -> None:
    depth = f"depth.{market}@100ms"
    book = LocalBook()
    last_seq: dict[str, int] = {}
    async with connect(url) as ws:
        await send(ws, "subscribe", id="public", channels=[f"ticker.{market}", f"trades.{market}", depth])
        if token:
            await send(ws, "auth", id="auth", token=token)
        async for raw in ws:
            frame: dict[str, Any] = json.loads(raw)
            kind = frame.get("type")
            if kind == "authenticated":
                show(f"authenticated as member {frame['member_id']}, position {frame['position']}")
                await send(ws, "subscribe", id="private", channels=["orders", "my_trades", "balances"])
                continue
            if kind == "error":
                show(f"error {frame['code']}: {frame['message']}")
                continue
            if kind is not None:
                if kind != "heartbeat":
                    show(f"{kind}: {frame.get('channels', '')}")
                continue
            channel: str = frame["channel"]
            data: dict[str, Any] = frame["data"]
            seq: int = frame["seq"]
            expected = last_seq.get(channel, seq - 1) + 1
            last_seq[channel] = seq
            if channel == depth:
                if seq != expected or not book.on_depth(data):
                    show(f"depth: missed an update (seq {seq}): subscribing again for a snapshot")
                    last_seq.pop(channel, None)
                    await send(ws, "subscribe", id="resnapshot", channels=[depth])
                    continue
                show(f"depth {market} @{book.sequence}: {book.top()}")
            elif channel.startswith("ticker."):
                show(
                    f"ticker {data['market']}: last {data['last']} bid {data['best_bid']} "
                    f"ask {data['best_ask']} 24h volume {data['volume']} ({data['change_percent']} %)"
                )
            elif channel.startswith("trades."):
                for trade in data["trades"]:
                    show(
                        f"trade {data['market']}: {trade['taker_side']} {trade['amount']} @ {trade['price']}"
                    )
            else:
                show(f"{channel} #{seq}: {json.dumps(data)} (resume from {frame.get('position')})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="The URL is the `websocket` line of the `bourse up` banner.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8002/ws", help="the pusher (default: %(default)s)")
    parser.add_argument("--market", default="btc_usd", help="a market id (default: %(default)s)")
    parser.add_argument("--token", help="a member JWT (`bourse token 1`): also orders, my_trades, balances")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    args = parser.parse_args(argv)

    async def run() -> None:
        async with asyncio.timeout(args.seconds):
            await watch(args.url, args.market, args.token)

    with contextlib.suppress(KeyboardInterrupt, TimeoutError):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
