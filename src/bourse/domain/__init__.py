"""The pure trading core: money, order book, matching, ledger. No I/O, no asyncio."""
