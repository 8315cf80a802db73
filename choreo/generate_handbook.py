"""A second, independent generator of labelled transactions, following the simulator of the
Fraud Detection Handbook (Le Borgne et al., "Reproducible Machine Learning for Credit Card
Fraud Detection - Practical Handbook", chapter 3.2, "Transaction data simulator").

It shares nothing with `choreo.generate` but the output format, so that a model trained on
one can be tested on the other. As in the Handbook:

- customers and terminals are placed uniformly on a square grid; a customer pays only at
  the terminals within a radius of 5 of its location;
- each customer has a spending profile: mean amount uniform in [5, 100], standard deviation
  half of it, mean number of payments per day uniform in [0, 4];
- each day a customer makes Poisson(mean per day) payments, at a time of day drawn from a
  normal around noon (sd 20,000 s, kept within the day), with an amount drawn from the
  normal of its profile (a negative draw is redrawn uniformly in [0, 2 x mean]);
- three fraud scenarios: `amount_over_220` (every payment above 220 is fraud),
  `compromised_terminal` (each day, terminals drawn at random become compromised for the
  next 28 days: every payment there is fraud), `compromised_card` (each day, customers
  drawn at random: for the next 14 days, a third of their payments are multiplied by 5 and
  fraud). A later scenario's label overrides an earlier one's, as in the Handbook.

Scaled down from the Handbook's 5,000 customers, 10,000 terminals and 183 days: the number
of customers follows from `n` (two payments per customer per day on average, over `DAYS`),
twice as many terminals, the grid sized to keep the Handbook's density (one terminal per
unit square), and the daily draws of compromised terminals and cards scaled with the
population (2 per 10,000 terminals, 3 per 5,000 customers per day). Every payment is in
EUR at a point of sale in one country: the Handbook's data has neither channel nor country.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2018, 4, 1, tzinfo=UTC)  # the Handbook's start date
DAYS = 90
RADIUS = 5.0
TERMINALS_PER_CUSTOMER = 2  # the Handbook's 10,000 terminals for 5,000 customers
COMPROMISED_TERMINALS_PER_DAY = 2 / 10_000  # per terminal
COMPROMISED_CARDS_PER_DAY = 3 / 5_000  # per customer
TERMINAL_DAYS = 28
CARD_DAYS = 14
LARGE_AMOUNT = 220.0
SCENARIOS = ("amount_over_220", "compromised_terminal", "compromised_card")


@dataclass(frozen=True)
class Profile:
    """A customer's location and spending habits."""

    card_id: str
    x: float
    y: float
    mean_amount: float
    std_amount: float
    per_day: float


def generate_handbook(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """About `n` transactions sorted by timestamp and their labels, the same for the same seed."""
    if n < 100:
        raise ValueError(f"n: need at least 100 transactions, got {n}")
    rng = random.Random(seed)  # noqa: S311 - synthetic data: reproducible, not secret
    n_customers = max(10, round(n / (2 * DAYS)))
    n_terminals = n_customers * TERMINALS_PER_CUSTOMER
    side = math.sqrt(n_terminals)  # one terminal per unit square, as in the Handbook
    customers = [_profile(rng, i, side) for i in range(n_customers)]
    terminals = [(rng.uniform(0, side), rng.uniform(0, side)) for _ in range(n_terminals)]
    reach = [_in_reach(c, terminals) for c in customers]
    # (seconds since START, customer index, terminal index, amount)
    drafts: list[tuple[float, int, int, float]] = []
    for day in range(DAYS):
        for index, customer in enumerate(customers):
            if not reach[index]:
                continue
            for _ in range(_poisson(rng, customer.per_day)):
                moment = rng.normalvariate(43_200, 20_000)
                if not 0 <= moment < 86_400:
                    continue  # the Handbook drops payments outside the day
                amount = rng.normalvariate(customer.mean_amount, customer.std_amount)
                if amount < 0:
                    amount = rng.uniform(0, customer.mean_amount * 2)
                drafts.append(
                    (day * 86_400 + moment, index, rng.choice(reach[index]), round(amount, 2))
                )
    drafts.sort()
    scenarios = _frauds(rng, drafts, n_customers, n_terminals)
    transactions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i, ((t, who, terminal, amount), scenario) in enumerate(zip(drafts, scenarios, strict=True)):
        tx_id = f"hb-{seed}-{i:07d}"
        if scenario == "compromised_card":
            amount = round(amount * 5, 2)
        transactions.append(
            {
                "transaction_id": tx_id,
                "card_id": customers[who].card_id,
                "terminal_id": f"hbt-{terminal:05d}",
                "amount": max(amount, 0.01),
                "currency": "EUR",
                "timestamp": (START + timedelta(seconds=int(t))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "country": "BE",
                "channel": "pos",
            }
        )
        labels.append(
            {"transaction_id": tx_id, "is_fraud": scenario is not None, "scenario": scenario}
        )
    return transactions, labels


def _profile(rng: random.Random, i: int, side: float) -> Profile:
    mean = rng.uniform(5, 100)
    return Profile(
        card_id=f"hbc-{i:05d}",
        x=rng.uniform(0, side),
        y=rng.uniform(0, side),
        mean_amount=mean,
        std_amount=mean / 2,
        per_day=rng.uniform(0, 4),
    )


def _in_reach(customer: Profile, terminals: list[tuple[float, float]]) -> list[int]:
    return [
        i
        for i, (x, y) in enumerate(terminals)
        if math.hypot(x - customer.x, y - customer.y) < RADIUS
    ]


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: the means here are small (at most 4)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _draws(rng: random.Random, rate: float) -> int:
    """How many of a population to compromise today: its expected count, the fraction as
    a chance, so that small populations still see the Handbook's rate over the days."""
    whole = math.floor(rate)
    return whole + (rng.random() < rate - whole)


def _frauds(
    rng: random.Random,
    drafts: list[tuple[float, int, int, float]],
    n_customers: int,
    n_terminals: int,
) -> list[str | None]:
    """The scenario of each draft (None: legitimate), in the Handbook's order."""
    scenarios: list[str | None] = [
        "amount_over_220" if amount > LARGE_AMOUNT else None for *_, amount in drafts
    ]
    # index -> the periods (from, until) in seconds during which it is compromised
    terminals: dict[int, list[tuple[float, float]]] = {}
    cards: dict[int, list[tuple[float, float]]] = {}
    for day in range(DAYS):
        start = day * 86_400.0
        rate = n_terminals * COMPROMISED_TERMINALS_PER_DAY
        for terminal in rng.sample(range(n_terminals), _draws(rng, rate)):
            terminals.setdefault(terminal, []).append((start, start + TERMINAL_DAYS * 86_400))
        rate = n_customers * COMPROMISED_CARDS_PER_DAY
        for customer in rng.sample(range(n_customers), _draws(rng, rate)):
            cards.setdefault(customer, []).append((start, start + CARD_DAYS * 86_400))
    for i, (t, customer, terminal, _) in enumerate(drafts):
        if any(a <= t < b for a, b in terminals.get(terminal, ())):
            scenarios[i] = "compromised_terminal"
        if any(a <= t < b for a, b in cards.get(customer, ())) and rng.random() < 1 / 3:
            scenarios[i] = "compromised_card"
    return scenarios
