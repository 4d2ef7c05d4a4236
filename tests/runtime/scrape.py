"""A process's `/metrics`, scraped over HTTP and parsed with prometheus-client's own parser, as
Prometheus would read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    families: list[tuple[str, str]]
    """(name, type) of each family, in exposition order: a name twice is a broken exposition."""
    samples: dict[tuple[str, Labels], float]
    """(sample name, its labels) -> value."""

    @classmethod
    def parse(cls, text: str) -> Scrape:
        families: list[tuple[str, str]] = []
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            families.append((family.name, family.type))
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(families, samples)

    @classmethod
    async def of(cls, health_url: str) -> Scrape:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{health_url}/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return cls.parse(response.text)

    def type_of(self, family: str) -> str | None:
        return next((kind for name, kind in self.families if name == family), None)

    def series(self, name: str, **labels: str) -> dict[Labels, float]:
        """Every sample called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {
            found: value
            for (sample, found), value in self.samples.items()
            if sample == name and wanted <= found
        }

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` with these labels (0 when there are none)."""
        return sum(self.series(name, **labels).values())

    def moved(self, before: Scrape, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)

    def label_values(self, name: str, label: str, **labels: str) -> set[str]:
        return {dict(found)[label] for found in self.series(name, **labels)}


def label_moves(after: Scrape, before: Scrape, name: str, label: str, **labels: str) -> Mapping[str, float]:
    """Per value of `label`, how far the samples called `name` moved (only those that did)."""
    moved: dict[str, float] = {}
    for found, value in after.series(name, **labels).items():
        delta = value - before.samples.get((name, found), 0.0)
        if delta:
            key = dict(found)[label]
            moved[key] = moved.get(key, 0.0) + delta
    return moved
