"""The public-holiday calendar of the `italian_public_holidays` dbt seed (Italy by default).

The feature SQL reads holidays from a seed (a small static lookup) so that training and
scoring see the same calendar. The default seed is Italy's national holidays from the
`holidays` package (a test checks that it still matches); a utility sets its own calendar by
regenerating the seed, e.g. with its patron-saint day (Bologna, 4 October):

    python -m ml.calendar                       # Italy, national holidays
    python -m ml.calendar --country IT --subdiv BO
    python -m ml.calendar --country ES --subdiv MD

or by adding rows (holiday_date, holiday_name) by hand; `dbt build` then relearns them.
The seed keeps its name: other models (int_metrics_scored) read it too.
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
    first_year: int = FIRST_YEAR,
    last_year: int = LAST_YEAR,
    country: str = "IT",
    subdiv: str | None = None,
) -> list[tuple[date, str]]:
    """(date, name) of every public holiday of `country` (and `subdiv`), sorted by date."""
    calendar = holidays.country_holidays(
        country, subdiv=subdiv, years=range(first_year, last_year + 1)
    )
    return sorted((day, name) for day, name in calendar.items())


def write_holiday_seed(
    path: Path = SEED_PATH, country: str = "IT", subdiv: str | None = None
) -> int:
    rows = italian_public_holidays(country=country, subdiv=subdiv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["holiday_date", "holiday_name"])
        for day, name in rows:
            writer.writerow([day.isoformat(), name])
    return len(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the holiday calendar seed")
    parser.add_argument("--country", default="IT", help="ISO country code (default IT)")
    parser.add_argument("--subdiv", default=None, help="subdivision, e.g. BO for Bologna")
    args = parser.parse_args()
    count = write_holiday_seed(country=args.country, subdiv=args.subdiv)
    print(f"{count} holidays written to {SEED_PATH}")
