"""The price table: USD per 1M tokens by served model name, `default` for the rest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flywheel.settings import PriceParams


@dataclass(frozen=True)
class PriceTable:
    """Looks up a served model's price; a model with no entry and no `default` costs nothing."""

    prices: Mapping[str, PriceParams]

    def cost_usd(self, served_model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of one answer in USD."""
        price = self.prices.get(served_model) or self.prices.get("default")
        if price is None:
            return 0.0
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
