"""Splitting one configuration's accounts over COUNT exporters: ``--shard INDEX/COUNT``.

An account belongs to shard ``sha256(name) mod COUNT``: the same on every machine and Python
version (unlike ``hash()``), so COUNT exporters given the same config and the indexes 0 to COUNT-1
(a StatefulSet's pod ordinals) cover every account exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from okx_loan_exporter.config import ExporterConfig

log = logging.getLogger(__name__)

SHARD_ENV = "OKX_SHARD"
_SHARD_RE = re.compile(r"([0-9]{1,6})/([0-9]{1,6})", re.ASCII)


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


class ShardError(ValueError):
    """A ``--shard`` value that is not INDEX/COUNT with 0 <= INDEX < COUNT."""


@dataclass(frozen=True)
class Shard:
    """The ``index``-th of ``count`` shards (0-based)."""

    index: int
    count: int

    def owns(self, account_name: str) -> bool:
        """True when the account of this name is this shard's."""
        return shard_of(account_name, self.count) == self.index

    def select(self, accounts: Sequence[N]) -> list[N]:
        """The accounts (anything with a ``name``) that are this shard's, in their order."""
        return [account for account in accounts if self.owns(account.name)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def name_hash(account_name: str) -> int:
    """A stable 64-bit hash of an account's name: the first 8 bytes of its SHA-256."""
    digest = hashlib.sha256(account_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def shard_of(account_name: str, count: int) -> int:
    """The shard (0 to count-1) of an account: its name's SHA-256, as a number, modulo count."""
    return name_hash(account_name) % count


def parse_shard(text: str) -> Shard:
    """``"1/3"`` -> ``Shard(1, 3)``; ShardError for anything else."""
    match = _SHARD_RE.fullmatch(text.strip())
    if match is None:
        raise ShardError(f"{text!r} is not INDEX/COUNT")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ShardError(f"{text!r} needs 0 <= INDEX < COUNT")
    return Shard(index, count)


def select_shard(config: ExporterConfig, shard: Shard | None) -> ExporterConfig:
    """``config`` with only the accounts of ``shard`` (all of them for None), at start and at
    every reload; a shard left without accounts is logged, not refused."""
    if shard is None:
        return config
    mine = replace(config, accounts=tuple(shard.select(config.accounts)))
    if not mine.accounts:
        log.warning(
            "shard %s of %s holds none of its %d account(s); it serves no account",
            shard,
            config.source,
            len(config.accounts),
        )
    return mine
