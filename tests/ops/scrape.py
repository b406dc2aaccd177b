"""Reading a Prometheus ``/metrics`` page (or a textfile) into samples a test can query."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    """Every sample of one scrape."""

    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Samples:
        """The samples of a page in the Prometheus text format."""
        return cls(
            [
                (sample.name, dict(sample.labels), sample.value)
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            ]
        )

    @classmethod
    def scrape(cls, base_url: str) -> Samples:
        """GET ``base_url/metrics`` and parse it."""
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:  # noqa: S310
            return cls.parse(response.read().decode())

    def names(self) -> set[str]:
        """The names of every sample."""
        return {name for name, _, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        )
