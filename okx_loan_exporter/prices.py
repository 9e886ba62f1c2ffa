"""OKX index prices as a plain dataclass, and the strict parser of the index-tickers answer.

``GET /api/v5/market/index-tickers?quoteCcy=USDT`` gives every index quoted in USDT in one answer:
``data[]`` of ``{"instId": "BTC-USDT", "idxPx": "60000.1", "ts": ...}``. A currency without an index
of its own is priced as OKX values it in a loan: the quote currency itself at 1, and another
stablecoin (USDC) at par when OKX sends no index for it. Anything that is not such an answer is
refused with :class:`~okx_loan_exporter.position.InvalidResponse`, so a malformed answer never
replaces good prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from okx_loan_exporter.position import InvalidResponse, parse_decimal

INDEX_TICKERS_PATH = "/api/v5/market/index-tickers"
QUOTE = "USDT"
"""The quote of the index prices the exporter asks for: OKX's loans are valued from them."""
STABLECOINS = frozenset({"USDT", "USDC"})
"""Currencies OKX lends and values at par: never part of the "everything falls" scenario, and
priced at 1 when OKX has no index for them."""
MAX_INSTRUMENT_LENGTH = 40


@dataclass(frozen=True)
class IndexPrices:
    """Index prices of one quote currency: ``prices[base]`` is ``idxPx`` of ``base-quote``."""

    quote: str
    prices: Mapping[str, float] = field(default_factory=dict)

    def price(self, currency: str) -> float | None:
        """``currency``'s price in the quote currency, the par rule applied; None when unknown."""
        if currency == self.quote:
            return 1.0
        found = self.prices.get(currency)
        if found is None and currency in STABLECOINS:
            return 1.0
        return found

    def of(self, currencies: Iterable[str]) -> dict[str, float]:
        """The prices of those ``currencies`` that have one."""
        found = {currency: self.price(currency) for currency in currencies}
        return {currency: price for currency, price in found.items() if price is not None}


def parse_index_tickers(body: object, quote: str = QUOTE) -> IndexPrices:
    """Build :class:`IndexPrices` from a decoded index-tickers answer whose ``code`` was ``"0"``.

    Every entry must be ``{"instId": "BASE-<quote>", "idxPx": "<positive decimal>"}`` (other keys
    are ignored); ``idxPx`` ``""`` is an absent price, and the same index twice is refused.
    """
    if not isinstance(body, Mapping):
        raise InvalidResponse(f"answer is a JSON {type(body).__name__}, not an object")
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidResponse("answer has no 'data' list")
    prices: dict[str, float] = {}
    for index, entry in enumerate(data):
        where = f"data[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidResponse(f"{where} is a {type(entry).__name__}, not an object")
        instrument = entry.get("instId")
        if not isinstance(instrument, str):
            raise InvalidResponse(f"{where}.instId: expected a string")
        base, dash, quoted = instrument.partition("-")
        if (
            not dash
            or quoted != quote
            or not base
            or len(instrument) > MAX_INSTRUMENT_LENGTH
            or not instrument.isascii()
            or not base.isalnum()
        ):
            raise InvalidResponse(f"{where}.instId: {instrument[:40]!r} is not an index of {quote}")
        if "idxPx" not in entry:
            raise InvalidResponse(f"{where} has no 'idxPx'")
        price = parse_decimal(entry["idxPx"], f"{where}.idxPx")
        if price is None:
            continue  # OKX's "" means absent
        if price <= 0:
            raise InvalidResponse(f"{where}.idxPx: {entry['idxPx']!r} is not a price")
        if base in prices:
            raise InvalidResponse(f"{where}.instId: {instrument!r} appears twice")
        prices[base] = price
    return IndexPrices(quote, prices)
