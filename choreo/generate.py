"""Deterministic synthetic card transactions with labelled fraud scenarios.

`generate(n, seed)` draws customers (cards) with a home country and a habitual amount, and
terminals in a few countries; each customer pays at a handful of favourite terminals in
their home country, at daytime-weighted hours, amounts log-normal around their habit. About
2% of the transactions are fraud, from four scenarios:

- `amount_spike`: one payment 8-20x the card's habit at one of its usual terminals.
- `compromised_terminal`: for 1-3 days a terminal runs a stream of stolen cards (bursts of
  many distinct cards within an hour); every transaction there in that period is fraud,
  including those of the terminal's regular customers.
- `card_testing`: a burst of 3-8 small e-commerce payments on one card within two minutes.
- `foreign_country`: a payment at a terminal in a country the card has never used.

Fraud starts after the first week so the cards have history. The same (n, seed) always
gives the same output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 30
HISTORY_DAYS = 7  # no fraud before the cards have a week of history
FRAUD_RATE = 0.02
SCENARIOS = ("amount_spike", "compromised_terminal", "card_testing", "foreign_country")
COUNTRIES = {"ES": "EUR", "FR": "EUR", "DE": "EUR", "GB": "GBP", "US": "USD"}
COUNTRIES_LIST = list(COUNTRIES)
HOME_WEIGHTS = {"ES": 5, "FR": 2, "DE": 2, "GB": 1, "US": 1}
# Relative weight of each hour of the day: quiet at night, busy at lunch and evening.
HOUR_WEIGHTS = [1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 11, 12, 11, 10, 10, 11, 12, 12, 10, 8, 6, 3, 2]
TRAVEL_RATE = 0.003  # legit payments abroad: the new_country rule's false positives


@dataclass(frozen=True)
class Terminal:
    terminal_id: str
    country: str


@dataclass(frozen=True)
class Customer:
    card_id: str
    country: str
    habit: float  # median amount
    terminals: tuple[Terminal, ...]  # favourites, in the home country


@dataclass
class Draft:
    """A transaction before ids and ordering: seconds since START plus its fields."""

    t: float
    card: str
    terminal: Terminal
    amount: float
    channel: str
    scenario: str | None


def generate(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`n` transactions sorted by timestamp and their labels, the same for the same seed."""
    if n < 100:
        raise ValueError(f"n: need at least 100 transactions, got {n}")
    rng = random.Random(seed)  # noqa: S311 - synthetic data: reproducible, not secret
    customers, terminals = _population(rng, n)
    frauds, compromised = _frauds(rng, customers, terminals, round(n * FRAUD_RATE))
    drafts = [_legit(rng, customers, terminals) for _ in range(n - len(frauds))] + frauds
    _compromise(drafts, compromised)
    drafts.sort(key=lambda d: (d.t, d.card))
    transactions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i, d in enumerate(drafts):
        tx_id = f"tx-{seed}-{i:07d}"
        transactions.append(
            {
                "transaction_id": tx_id,
                "card_id": d.card,
                "terminal_id": d.terminal.terminal_id,
                "amount": round(max(d.amount, 0.01), 2),
                "currency": COUNTRIES[d.terminal.country],
                "timestamp": (START + timedelta(seconds=int(d.t))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "country": d.terminal.country,
                "channel": d.channel,
            }
        )
        labels.append(
            {"transaction_id": tx_id, "is_fraud": d.scenario is not None, "scenario": d.scenario}
        )
    return transactions, labels


def _population(rng: random.Random, n: int) -> tuple[list[Customer], dict[str, list[Terminal]]]:
    """About 2 payments per customer per day; ~5 customers per terminal's favourites."""
    n_customers = max(20, n // (2 * DAYS))
    by_country: dict[str, list[Terminal]] = {c: [] for c in COUNTRIES}
    for i in range(max(len(COUNTRIES) * 4, n_customers // 2)):
        country = COUNTRIES_LIST[i % len(COUNTRIES_LIST)]
        by_country[country].append(Terminal(f"term-{i:05d}", country))
    customers = []
    for i in range(n_customers):
        home = rng.choices(list(HOME_WEIGHTS), weights=list(HOME_WEIGHTS.values()))[0]
        local = by_country[home]
        favourites = rng.sample(local, k=min(5, len(local)))
        customers.append(
            Customer(
                card_id=f"card-{i:06d}",
                country=home,
                habit=rng.lognormvariate(3.5, 0.6),  # median ~33
                terminals=tuple(favourites),
            )
        )
    return customers, by_country


def _when(rng: random.Random, first_day: int = 0) -> float:
    day = rng.randrange(first_day, DAYS)
    hour = rng.choices(range(24), weights=HOUR_WEIGHTS)[0]
    return (day * 24 + hour) * 3600.0 + rng.uniform(0, 3600)


def _legit(
    rng: random.Random, customers: list[Customer], terminals: dict[str, list[Terminal]]
) -> Draft:
    c = rng.choice(customers)
    if rng.random() < TRAVEL_RATE:
        abroad = [k for k in COUNTRIES if k != c.country]
        terminal = rng.choice(terminals[rng.choice(abroad)])
    else:
        terminal = rng.choice(c.terminals)
    channel = rng.choices(["pos", "ecom", "atm"], weights=[7, 2, 1])[0]
    amount = c.habit * rng.lognormvariate(0, 0.5)
    return Draft(_when(rng), c.card_id, terminal, amount, channel, None)


def _frauds(
    rng: random.Random,
    customers: list[Customer],
    terminals: dict[str, list[Terminal]],
    budget: int,
) -> tuple[list[Draft], list[Compromise]]:
    """Fraud drafts until at least `budget`; and the compromised terminals.

    Each round draws the scenario with the fewest fraud transactions so far, so the four
    share the budget although one run of some scenarios yields many transactions.
    """
    out: list[Draft] = []
    compromised: list[Compromise] = []
    drawn = dict.fromkeys(SCENARIOS, 0)
    while len(out) < budget:
        scenario = min(SCENARIOS, key=lambda k: drawn[k])
        before = len(out)
        c = rng.choice(customers)
        t = _when(rng, HISTORY_DAYS)
        if scenario == "amount_spike":
            terminal = rng.choice(c.terminals)
            amount = c.habit * rng.uniform(8, 20)
            out.append(Draft(t, c.card_id, terminal, amount, "pos", scenario))
        elif scenario == "card_testing":
            terminal = rng.choice(terminals[c.country])
            for _ in range(rng.randint(3, 8)):
                t += rng.uniform(2, 15)
                out.append(Draft(t, c.card_id, terminal, rng.uniform(0.5, 3), "ecom", scenario))
        elif scenario == "foreign_country":
            abroad = [k for k in COUNTRIES if k != c.country]
            terminal = rng.choice(terminals[rng.choice(abroad)])
            amount = c.habit * rng.lognormvariate(0.5, 0.5)
            out.append(Draft(t, c.card_id, terminal, amount, "ecom", scenario))
        else:
            run, compromise = _stolen_cards_run(rng, customers, terminals, t)
            out.extend(run)
            compromised.append(compromise)
        drawn[scenario] += len(out) - before
    return out, compromised


@dataclass(frozen=True)
class Compromise:
    """A terminal that frauds every card used there from `start` to `end` (seconds)."""

    terminal_id: str
    start: float
    end: float


def _stolen_cards_run(
    rng: random.Random, customers: list[Customer], terminals: dict[str, list[Terminal]], t: float
) -> tuple[list[Draft], Compromise]:
    """A compromised terminal: for 1-3 days, an hour a day of many distinct stolen cards."""
    terminal = rng.choice(terminals[rng.choice(COUNTRIES_LIST)])
    days = rng.randint(1, 3)
    out = []
    for day in range(days):
        start = t + day * 86400
        for victim in rng.sample(customers, k=min(len(customers), rng.randint(8, 15))):
            out.append(
                Draft(
                    start + rng.uniform(0, 3600),
                    victim.card_id,
                    terminal,
                    victim.habit * rng.lognormvariate(0.7, 0.4),
                    "pos",
                    "compromised_terminal",
                )
            )
    return out, Compromise(terminal.terminal_id, t, t + days * 86400)


def _compromise(drafts: list[Draft], compromised: list[Compromise]) -> None:
    """Relabel the legit payments made at a compromised terminal while it was compromised."""
    for d in drafts:
        for c in compromised:
            if (
                d.scenario is None
                and d.terminal.terminal_id == c.terminal_id
                and c.start <= d.t < c.end
            ):
                d.scenario = "compromised_terminal"
