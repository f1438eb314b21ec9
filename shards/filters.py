"""Catalog-field filters as boolean masks over a shard's rows, applied before top-k."""

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filters:
    """Which models a query may return; empty fields do not restrict.

    Attributes:
        tags_any: at least one of these tags.
        tags_all: every one of these tags.
        tags_none: none of these tags.
        licenses: one of these licenses.
        architectures: one of these architectures.
        min_resolution, max_resolution: inclusive bounds on the side in pixels; a model
            without a resolution fails any bound.
    """

    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    tags_none: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    min_resolution: int | None = None
    max_resolution: int | None = None

    @property
    def is_empty(self) -> bool:
        return self == Filters()


class FilterIndex:
    """Inverted lists of a shard's catalog fields, so a filter costs O(matching rows)."""

    def __init__(self, metadata: tuple[dict[str, Any], ...]):
        self._n = len(metadata)
        self._tags = self._invert(m.get("tags") or () for m in metadata)
        self._licenses = self._invert((m.get("license"),) for m in metadata)
        self._architectures = self._invert((m.get("architecture"),) for m in metadata)
        self._resolutions = np.array(
            [np.nan if m.get("resolution") is None else m["resolution"] for m in metadata],
            dtype=np.float64,
        )

    @staticmethod
    def _invert(values_per_row) -> dict[str, np.ndarray]:
        rows = defaultdict(list)
        for row, values in enumerate(values_per_row):
            for value in values:
                if value is not None:
                    rows[str(value).lower()].append(row)
        return {value: np.array(r, dtype=np.int64) for value, r in rows.items()}

    def _any_of(self, inverted: dict[str, np.ndarray], values: tuple[str, ...]) -> np.ndarray:
        mask = np.zeros(self._n, dtype=bool)
        for value in values:
            mask[inverted.get(value.lower(), [])] = True
        return mask

    def mask(self, filters: Filters) -> np.ndarray | None:
        """(n,) bool of the rows `filters` allows, or None when it allows every row."""
        if filters.is_empty:
            return None
        mask = np.ones(self._n, dtype=bool)
        if filters.tags_any:
            mask &= self._any_of(self._tags, filters.tags_any)
        for tag in filters.tags_all:
            mask &= self._any_of(self._tags, (tag,))
        if filters.tags_none:
            mask &= ~self._any_of(self._tags, filters.tags_none)
        if filters.licenses:
            mask &= self._any_of(self._licenses, filters.licenses)
        if filters.architectures:
            mask &= self._any_of(self._architectures, filters.architectures)
        # NaN compares False, so models without a resolution fail any bound.
        if filters.min_resolution is not None:
            mask &= self._resolutions >= filters.min_resolution
        if filters.max_resolution is not None:
            mask &= self._resolutions <= filters.max_resolution
        return mask
