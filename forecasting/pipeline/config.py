"""What a run's steps read from the settings, and nothing more: no token, no price source.

The flows hand each task a :class:`RunConfig` (it is pickled into every task run, and to Dask
workers), never the whole :class:`~forecasting.settings.Settings`. Library functions accept
anything shaped like it (:class:`RunSettings`), so the CLI, tests and benchmarks pass their
``Settings`` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from forecasting.settings import ModelSettings, PolicySettings, Settings


class RunSettings(Protocol):
    """The settings a day's run reads."""

    @property
    def model(self) -> ModelSettings: ...

    @property
    def policy(self) -> PolicySettings: ...

    @property
    def exchange(self) -> str: ...

    @property
    def model_dir(self) -> str: ...

    @property
    def checkpoint_store(self) -> str: ...

    @property
    def tickers(self) -> tuple[str, ...]: ...

    @property
    def universe(self) -> str: ...


@dataclass(frozen=True)
class RunConfig:
    """A run's configuration, narrowed from the settings at the flow's edge."""

    database_url: str
    model: ModelSettings
    policy: PolicySettings
    exchange: str
    model_dir: str
    checkpoint_store: str
    tickers: tuple[str, ...]
    universe: str = ""  # all | index:CODE | "" (the tickers); forecasting.data.universe

    @classmethod
    def of(cls, settings: Settings) -> RunConfig:
        return cls(
            database_url=settings.database_url,
            model=settings.model,
            policy=settings.policy,
            exchange=settings.exchange,
            model_dir=settings.model_dir,
            checkpoint_store=settings.checkpoint_store,
            tickers=tuple(settings.tickers),
            universe=settings.universe,
        )
