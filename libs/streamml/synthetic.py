"""Seeded synthetic card transactions for demos, training and tests.

:func:`generate_events` yields ``(event, label)`` pairs: ``event`` is a dict shaped like
``schemas/event.avsc`` (``event_time`` in epoch milliseconds, nested ``payload``), and
``label`` is 1 for fraud, 0 otherwise. The fraud pattern is one that per-entity features
make learnable: a compromised card suddenly makes a *burst* of several transactions within
minutes, for amounts well above that card's usual, mostly e-commerce from a foreign country
on a device seen for the first time, at risky merchant categories. Legitimate traffic
varies too (travel abroad, big purchases, new phones), so the problem is not trivial.

An optional drift after record ``drift_at`` shifts the amount distribution and the country
mix of legitimate traffic, and makes part of the fraud mimic the card's normal behaviour,
so a model trained before the drift gets measurably worse after it.

The same seed always gives the same sequence (one :class:`random.Random`, no global state).

>>> events = list(generate_events(3, seed=7))
>>> [e["entity_id"] for e, _ in events] == [e["entity_id"] for e, _ in generate_events(3, seed=7)]
True
>>> sorted(events[0][0]["payload"])[:3]
['amount', 'card_present', 'channel']
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_START_MS",
    "CardProfile",
    "Drift",
    "generate_events",
    "label_delay_ms",
    "label_record",
]

DEFAULT_START_MS = 1_793_491_200_000
"""2026-11-01T00:00:00Z: a fixed origin so a seed reproduces the same event times."""

_HOME_COUNTRIES = ("DE", "FR", "NL", "ES", "IT", "BE", "AT", "PL")
_HOME_WEIGHTS = (0.30, 0.18, 0.12, 0.12, 0.10, 0.07, 0.06, 0.05)
_TRAVEL_COUNTRIES = ("DE", "FR", "ES", "IT", "GB", "US", "CH", "PT", "GR", "HR")
_RISKY_COUNTRIES = ("NG", "RU", "BR", "ID", "VN", "UA", "RO", "US", "GB", "CN")
_CURRENCY = {
    "DE": "EUR", "FR": "EUR", "NL": "EUR", "ES": "EUR", "IT": "EUR", "BE": "EUR",
    "AT": "EUR", "PT": "EUR", "GR": "EUR", "HR": "EUR", "PL": "PLN", "GB": "GBP",
    "US": "USD", "CH": "CHF", "NG": "NGN", "RU": "RUB", "BR": "BRL", "ID": "IDR",
    "VN": "VND", "UA": "UAH", "RO": "RON", "CN": "CNY",
}  # fmt: skip
# MCCs: grocery, restaurants, fuel, drug stores, clothing, transit, ATM cash, airlines.
_NORMAL_MCC_POS = ("5411", "5812", "5541", "5912", "5651", "4111", "5311", "5814")
_NORMAL_MCC_ECOM = ("5942", "5399", "4899", "5818", "4511", "7011", "5651", "5999")
# Electronics, jewellery, digital goods, money transfer, gift cards / stored value.
_FRAUD_MCC = ("5732", "5944", "5815", "4829", "6540", "5732", "5999")
_CHANNELS = ("pos", "ecommerce", "atm", "moto")
_FOLLOW_UP_MEAN = 2.5
# Mean burst length: 1 first + 1 + E[floor(Exp(mean 2.5))] follow-ups (cap 9 barely matters).
_BURST_MEAN_LENGTH = 2.0 + 1.0 / (math.exp(1.0 / _FOLLOW_UP_MEAN) - 1.0)


@dataclass(frozen=True, slots=True)
class Drift:
    """What changes after ``drift_at``.

    ``amount_factor`` multiplies legitimate amounts (inflation, a new premium segment);
    ``foreign_share`` is the share of legitimate transactions abroad (a holiday season);
    ``fraud_camouflage`` is the share of fraudulent transactions that copy the card's
    normal amount, home country and known device (fraudsters adapt), which is the part
    that makes a model trained before the drift miss fraud.
    """

    amount_factor: float = 2.2
    foreign_share: float = 0.35
    fraud_camouflage: float = 0.6


@dataclass(slots=True)
class CardProfile:
    """The stable habits of one card, drawn once per card from the seed."""

    entity_id: str
    home: str
    currency: str
    log_amount_mu: float
    log_amount_sigma: float
    ecommerce_share: float
    device_age_days: int | None
    customer_age_years: int | None


def _draw_profile(rng: random.Random, index: int) -> CardProfile:
    home = rng.choices(_HOME_COUNTRIES, _HOME_WEIGHTS)[0]
    return CardProfile(
        entity_id=f"card-{index:06d}",
        home=home,
        currency=_CURRENCY[home],
        log_amount_mu=rng.gauss(3.3, 0.6),  # median ~27, cards range ~8..90
        log_amount_sigma=rng.uniform(0.4, 0.9),
        ecommerce_share=rng.uniform(0.1, 0.5),
        device_age_days=None if rng.random() < 0.1 else rng.randint(30, 1500),
        customer_age_years=None if rng.random() < 0.15 else rng.randint(18, 85),
    )


def _event_id(rng: random.Random) -> str:
    # A UUID4-shaped id from the seeded generator (uuid.uuid4 would not be reproducible).
    bits = rng.getrandbits(128)
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _legit(
    rng: random.Random, card: CardProfile, event_time: int, drift: Drift | None
) -> dict[str, Any]:
    rand = rng.random
    amount = math.exp(rng.gauss(card.log_amount_mu, card.log_amount_sigma))
    foreign = 0.07
    if drift is not None:
        amount *= drift.amount_factor
        foreign = drift.foreign_share
    if rand() < 0.03:  # an occasional big legitimate purchase
        amount *= rng.uniform(3.0, 8.0)
    country = rng.choice(_TRAVEL_COUNTRIES) if rand() < foreign else card.home
    r = rand()
    if r < card.ecommerce_share:
        channel = "ecommerce"
        mcc = rng.choice(_NORMAL_MCC_ECOM)
        # Mostly the card holder's known device; sometimes a new phone or laptop.
        device: int | None = card.device_age_days
        if device is not None and rand() < 0.05:
            device = rng.randint(0, 3)
    elif r < card.ecommerce_share + 0.06:
        channel = "atm"
        mcc = "6011"
        amount = float(max(20, round(amount * 2, -1)))
        device = None
    elif r < card.ecommerce_share + 0.08:
        channel = "moto"
        mcc = rng.choice(_NORMAL_MCC_ECOM)
        device = None
    else:
        channel = "pos"
        mcc = rng.choice(_NORMAL_MCC_POS)
        device = None
    return _event(
        rng,
        card,
        event_time,
        amount=amount,
        country=country,
        channel=channel,
        mcc=mcc,
        device=device,
    )


def _fraud(
    rng: random.Random, card: CardProfile, event_time: int, drift: Drift | None
) -> dict[str, Any]:
    rand = rng.random
    if drift is not None and rand() < drift.fraud_camouflage:
        # Adapted fraud: looks like the card's own habits, only the burst gives it away.
        amount = math.exp(rng.gauss(card.log_amount_mu, card.log_amount_sigma)) * 1.3
        channel = "ecommerce" if rand() < 0.5 else "pos"
        mcc = rng.choice(_NORMAL_MCC_ECOM if channel == "ecommerce" else _NORMAL_MCC_POS)
        device = card.device_age_days if channel == "ecommerce" else None
        return _event(
            rng,
            card,
            event_time,
            amount=amount,
            country=card.home,
            channel=channel,
            mcc=mcc,
            device=device,
        )
    amount = math.exp(card.log_amount_mu + rng.gauss(1.6, 0.6))
    country = rng.choice(_RISKY_COUNTRIES) if rand() < 0.7 else card.home
    r = rand()
    channel = "ecommerce" if r < 0.75 else ("moto" if r < 0.85 else "pos")
    device = (
        (rng.randint(0, 1) if rand() < 0.8 else card.device_age_days)
        if (channel == "ecommerce")
        else None
    )
    mcc = rng.choice(_FRAUD_MCC)
    return _event(
        rng,
        card,
        event_time,
        amount=amount,
        country=country,
        channel=channel,
        mcc=mcc,
        device=device,
    )


def _event(
    rng: random.Random,
    card: CardProfile,
    event_time: int,
    *,
    amount: float,
    country: str,
    channel: str,
    mcc: str,
    device: int | None,
) -> dict[str, Any]:
    return {
        "event_id": _event_id(rng),
        "entity_id": card.entity_id,
        "event_time": event_time,
        "event_type": "card_transaction",
        "payload": {
            "amount": round(max(amount, 0.5), 2),
            "currency": card.currency if channel == "atm" else _CURRENCY.get(country, "EUR"),
            "merchant_id": f"m{rng.getrandbits(14):05d}",
            "merchant_category": mcc,
            "country": country,
            "channel": channel,
            "card_present": channel in ("pos", "atm"),
            "device_age_days": device,
            "customer_age_years": card.customer_age_years,
        },
        "produced_at": None,
    }


def generate_events(
    n: int,
    *,
    seed: int,
    n_entities: int = 5000,
    start_ms: int = DEFAULT_START_MS,
    rate_per_s: float = 5.0,
    fraud_rate: float = 0.02,
    drift_at: int | None = None,
    drift: Drift | None = None,
) -> Iterator[tuple[dict[str, Any], int]]:
    """Yield ``n`` ``(event, label)`` pairs in event-time order, deterministic for ``seed``.

    ``rate_per_s`` is the mean arrival rate over all cards (Poisson arrivals); activity
    is skewed, so some cards are much busier than others. About ``fraud_rate`` of the
    events are fraud, arriving in bursts of several transactions of one card within
    minutes. From record index ``drift_at`` on (0-based), ``drift`` (default
    :class:`Drift`) applies.

    >>> sum(label for _, label in generate_events(20_000, seed=1)) / 20_000  # doctest: +SKIP
    0.02
    """
    if n < 0 or n_entities < 1 or rate_per_s <= 0 or not 0 <= fraud_rate < 1:
        raise ValueError("need n >= 0, n_entities >= 1, rate_per_s > 0, 0 <= fraud_rate < 1")
    rng = random.Random(seed)
    active_drift = drift if drift is not None else Drift()
    profiles: dict[int, CardProfile] = {}
    burst_start_p = fraud_rate / _BURST_MEAN_LENGTH
    mean_gap_ms = 1000.0 / rate_per_s
    # Scheduled follow-up fraud transactions: (event_time, seq, card index).
    pending: list[tuple[int, int, int]] = []
    next_arrival = float(start_ms)
    seq = 0
    for index in range(n):
        current_drift = active_drift if drift_at is not None and index >= drift_at else None
        if pending and pending[0][0] < next_arrival:
            event_time, _, card_index = heapq.heappop(pending)
            yield _fraud(rng, profiles[card_index], event_time, current_drift), 1
            continue
        event_time = int(next_arrival)
        next_arrival += rng.expovariate(1.0) * mean_gap_ms
        card_index = int(n_entities * rng.random() ** 1.6)
        card = profiles.get(card_index)
        if card is None:
            card = profiles[card_index] = _draw_profile(rng, card_index)
        if rng.random() < burst_start_p:
            # A compromised card: this and a few more transactions within minutes.
            follow_ups = min(int(rng.expovariate(1.0 / _FOLLOW_UP_MEAN)) + 1, 9)
            at = event_time
            for _ in range(follow_ups):
                at += rng.randint(15_000, 240_000)
                seq += 1
                heapq.heappush(pending, (at, seq, card_index))
            yield _fraud(rng, card, event_time, current_drift), 1
        else:
            yield _legit(rng, card, event_time, current_drift), 0


def label_delay_ms(rng: random.Random) -> int:
    """A realistic delay between an event and its ground-truth label, in milliseconds.

    A mixture: about 60% are confirmed quickly (analyst review, customer call; median
    ~15 minutes), the rest arrive as chargebacks days later (median ~2 days), capped at
    30 days.
    """
    if rng.random() < 0.6:
        delay_s = rng.lognormvariate(math.log(900.0), 1.0)
    else:
        delay_s = rng.lognormvariate(math.log(2 * 86_400.0), 0.8)
    return int(min(delay_s, 30 * 86_400.0) * 1000)


def label_record(
    event: dict[str, Any], label: int, rng: random.Random, delay_scale: float = 1.0
) -> dict[str, Any]:
    """The ``Label`` record (schemas/label.avsc) for ``event``, with a random delay.

    ``delay_scale`` shortens (or stretches) the delay drawn by :func:`label_delay_ms`: a run
    that shortens the label horizon shortens the delays with it, so that the same share of
    labels arrives within the horizon. The source is named by the delay as drawn.
    """
    delay = label_delay_ms(rng)
    return {
        "event_id": event["event_id"],
        "entity_id": event["entity_id"],
        "label": int(label),
        "labeled_at": int(event["event_time"]) + int(delay * delay_scale),
        "source": "analyst" if delay < 86_400_000 else "chargeback",
    }
