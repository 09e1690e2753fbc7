"""Italian public holidays for the `italian_public_holidays` dbt seed.

The feature SQL reads holidays from a seed (a small static lookup) so that training and
scoring see the same calendar. The seed is generated from the `holidays` package and a test
checks that it still matches; regenerate with `python -m ml.calendar`.
National holidays only: a city's patron-saint day (Bologna: 4 October) is not included.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import holidays

from flows.kernel.settings import DBT_PROJECT_DIR

SEED_PATH = DBT_PROJECT_DIR / "seeds" / "ml" / "italian_public_holidays.csv"
FIRST_YEAR = 2000
LAST_YEAR = 2050


def italian_public_holidays(
    first_year: int = FIRST_YEAR, last_year: int = LAST_YEAR
) -> list[tuple[date, str]]:
    """(date, name) of every national public holiday in Italy, sorted by date."""
    calendar = holidays.country_holidays("IT", years=range(first_year, last_year + 1))
    return sorted((day, name) for day, name in calendar.items())


def write_holiday_seed(path: Path = SEED_PATH) -> int:
    rows = italian_public_holidays()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["holiday_date", "holiday_name"])
        for day, name in rows:
            writer.writerow([day.isoformat(), name])
    return len(rows)


if __name__ == "__main__":
    print(f"{write_holiday_seed()} holidays written to {SEED_PATH}")
