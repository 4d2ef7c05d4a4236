"""The process's scrape-time families (`bourse.adapters.metrics.ScrapedFamilies`): one family per
name whatever number of sources feed it, samples of the same labels added up, a broken source
never hiding the others, and a source gone once its service stopped."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest

from bourse.adapters.metrics import CONSUMER_LAG, CONSUMER_MESSAGES, Sample, ScrapedFamilies
from tests.runtime.scrape import Scrape


def test_sources_of_one_family_make_one_family_with_their_samples_added_up() -> None:
    scraped = ScrapedFamilies([CONSUMER_MESSAGES, CONSUMER_LAG])
    registry = CollectorRegistry()
    registry.register(scraped)

    def accounts() -> Iterable[Sample]:
        yield Sample(CONSUMER_MESSAGES, ("accounts", "accounts-0"), 5)
        yield Sample(CONSUMER_LAG, ("accounts", "accounts-0"), 2)

    def twin() -> Iterable[Sample]:  # a second instance of the service in the same process
        return [Sample(CONSUMER_MESSAGES, ("accounts", "accounts-0"), 3)]

    def broken() -> Iterable[Sample]:
        raise RuntimeError("a service's bug")

    def matching() -> Iterable[Sample]:
        return [Sample(CONSUMER_MESSAGES, ("matching", "matching-btc_usd"), 7)]

    unwatch = [scraped.watch(source) for source in (accounts, twin, broken, matching)]
    scrape = Scrape.parse(generate_latest(registry).decode())
    assert scrape.families == [
        ("bourse_consumer_messages", "counter"),
        ("bourse_consumer_lag_messages", "gauge"),
    ]
    assert scrape.value("bourse_consumer_messages_total", service="accounts") == 8
    assert scrape.value("bourse_consumer_messages_total", service="matching") == 7
    assert scrape.value("bourse_consumer_lag_messages", consumer="accounts-0") == 2

    for stop in unwatch[:3]:
        stop()
    scrape = Scrape.parse(generate_latest(registry).decode())
    assert scrape.series("bourse_consumer_messages_total", service="accounts") == {}
    assert scrape.value("bourse_consumer_messages_total", service="matching") == 7
    assert scrape.series("bourse_consumer_lag_messages") == {}
