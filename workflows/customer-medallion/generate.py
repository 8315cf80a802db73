"""Writes customers.csv: sample customers for the medallion workflow, with dirty rows.

Deterministic (a fixed seed): running it again writes the same file.

    python workflows/customer-medallion/generate.py [OUT]

180 customers with clean but untidy values (stray spaces, mixed case), then: 10 exact
duplicate rows, 6 later sign-ups of existing customers (a newer plan and spend: silver
keeps these), and 16 rows that break a rule (blank or malformed emails, impossible or
unparseable dates, negative or non-numeric spend, a blank customer_id).
"""

import csv
import random
import sys
from datetime import date, timedelta
from pathlib import Path

HEADER = ["customer_id", "name", "email", "country", "signup_date", "plan", "monthly_spend"]
FIRST = ["Ada", "Ben", "Chloe", "Dev", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jun", "Kofi"]
LAST = ["Almeida", "Brandt", "Costa", "Dubois", "Eze", "Fischer", "Garcia", "Haddad", "Ito"]
COUNTRIES = ["DE", "FR", "NG", "PT", "JP", "US"]
PLANS = {"free": (0, 0), "basic": (5, 20), "pro": (20, 80), "enterprise": (200, 900)}
# Rows that break exactly one rule each: (field, bad value).
BROKEN = [
    ("email", ""),
    ("email", "   "),
    ("email", ""),
    ("email", ""),
    ("email", "not-an-email"),
    ("email", "someone@nowhere"),
    ("signup_date", "2024-02-30"),
    ("signup_date", "yesterday"),
    ("signup_date", "15/03/2024"),
    ("signup_date", ""),
    ("monthly_spend", "-12.50"),
    ("monthly_spend", "-1"),
    ("monthly_spend", "-300.00"),
    ("monthly_spend", "n/a"),
    ("monthly_spend", "12,5"),
    ("customer_id", ""),
]


def customer(rng: random.Random, number: int) -> dict[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    plan = rng.choice(list(PLANS))
    low, high = PLANS[plan]
    email = f"{first}.{last}{number}@example.com"
    return {
        "customer_id": f"C{number:04d}",
        "name": rng.choice([f"{first} {last}", f" {first} {last} "]),
        "email": rng.choice([email.lower(), email, f" {email.upper()} "]),
        "country": rng.choice([*COUNTRIES, *(c.lower() for c in COUNTRIES)]),
        "signup_date": (date(2023, 1, 1) + timedelta(days=rng.randrange(540))).isoformat(),
        "plan": rng.choice([plan, plan.upper(), plan.title()]),
        "monthly_spend": f"{rng.uniform(low, high):.2f}",
    }


def rows(seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    clean = [customer(rng, number) for number in range(1, 181)]
    duplicates = [dict(row) for row in rng.sample(clean, 10)]
    later = []
    for row in rng.sample(clean, 6):
        newer = date.fromisoformat(row["signup_date"]) + timedelta(days=rng.randrange(1, 120))
        later.append(
            {**row, "signup_date": newer.isoformat(), "plan": "pro", "monthly_spend": "49.00"}
        )
    broken = []
    for number, (field, value) in enumerate(BROKEN, start=181):
        broken.append({**customer(rng, number), field: value})
    everything = clean + duplicates + later + broken
    rng.shuffle(everything)
    return everything


def write(path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows())


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("customers.csv"))
