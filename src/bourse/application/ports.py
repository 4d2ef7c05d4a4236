"""The ports: what the entry points and services need from the outside world, as Protocols, and
the errors those needs can end in. Adapters implement them (`bourse.adapters.*`); entry points
depend on these names only, so a read model or an intake can be swapped without touching a route.

Every error here says what a client may be told, and each is true under any fault (issue 10):
`NotSent` means nothing will ever be stored; `OutcomeUnknown` means it may be, and by when it is
settled; `QueryFailed` carries an HTTP-like status and a stable code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from bourse.contracts.messages import Decision, Outcome
from bourse.domain.candles import Candle, Period
from bourse.domain.order_views import BalanceView, DepthView, MemberTrade, OrderView, PublicTrade
from bourse.domain.orders import AmendOrder, CancelOrder, OrderStatus, PlaceOrder
from bourse.domain.tickers import Ticker
from bourse.domain.values import OrderId

Command = PlaceOrder | CancelOrder | AmendOrder
"""What a member asks of the order pipeline."""


class NotSent(Exception):
    """The command was never handed to NATS: it is not stored and never will be."""


class OutcomeUnknown(Exception):
    """The command was published but not acknowledged in time: it may or may not be stored.
    Either way it is settled by `decided_by_ns`: stored after its deadline, accounts refuses it."""

    def __init__(self, order_id: int, decided_by_ns: int) -> None:
        super().__init__(f"no acknowledgement for order {order_id} before its deadline")
        self.order_id = order_id
        self.decided_by_ns = decided_by_ns


class QueryFailed(Exception):
    """A read answered with an error (or not answered). `status` is HTTP-like, `code` stable:
    400 invalid_request, 404 order_not_found / unknown_market, 503 not_ready / unavailable
    (no instance answers), 504 timeout."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Submitted(Protocol):
    """A command the intake has made durable: the handle to wait for its answers with."""

    @property
    def command(self) -> Command: ...


S = TypeVar("S", bound=Submitted)


class OrderSubmitter(Protocol[S]):
    """The order pipeline's way in (`bourse.adapters.order_intake.OrderIntake`)."""

    async def submit(self, command: Command) -> S:
        """Return once the command is durable; raise `NotSent` or `OutcomeUnknown` otherwise."""
        ...

    async def answer(self, submission: S, timeout_s: float) -> tuple[Decision | None, Outcome | None]:
        """The accounts decision and the engine outcome, None for what did not come in time."""
        ...

    def forget(self, submission: S) -> None: ...


class ReadModel(Protocol):
    """The reads the gateway makes: the query service, the Redis cache, the SQL tables, or a chain
    of them (`bourse.adapters.read_chain`). Failures raise `QueryFailed`; every read with a limit
    refuses its arguments by `bourse.application.read_queries`."""

    async def order(self, member_id: int, order_id: int) -> OrderView: ...

    async def orders(
        self,
        member_id: int,
        *,
        market: str | None = None,
        state: str | None = None,
        status: OrderStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[OrderView]: ...

    async def balances(self, member_id: int) -> list[BalanceView]: ...

    async def depth(self, market: str, limit: int = 50) -> DepthView: ...

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]: ...

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]: ...


class StatisticsReads(Protocol):
    """The market statistics the gateway reads: the statistics service, the Redis cache, the SQL
    tables, or a chain of them. Arguments are checked by `bourse.application.read_queries`
    (`check_klines_query`) before a model is asked; failures raise `QueryFailed`."""

    async def ticker(self, market: str) -> Ticker:
        """The market's 24-hour ticker; before its first trade, one with no prices."""
        ...

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        """`ticker()` of each of `markets`, in that order."""
        ...

    async def klines(
        self, market: str, period: Period, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        """Gap-filled candles, oldest first, paged as `bourse.domain.candles.page_bounds` says."""
        ...


class OrderProgress(Protocol):
    """Whether an order no read model knows may still appear (`bourse.adapters.order_progress`)."""

    async def may_be_pending(self, member_id: int, order_id: int) -> bool: ...


class IdSource(Protocol):
    """Order ids made in process (`bourse.adapters.id_leases.LeasedIdGenerator`)."""

    def next_id(self) -> OrderId: ...


class MemberPrincipal(Protocol):
    @property
    def member_id(self) -> int: ...


class TokenVerifier(Protocol):
    """Checks a member's bearer token; raises an error with a stable `.code` when it is refused."""

    def verify(self, token: str) -> MemberPrincipal: ...
