"""A small transactions-only retailer, in the shape of the UCI "Online Retail II" export.

One CSV row per invoice line (Invoice, StockCode, Description, Quantity, InvoiceDate,
Price, Customer ID, Country), ids only. Customers buy at their own rate and may stop for
good after any purchase (the buy-till-you-die story of BG/NBD), so "no purchase within N
days" is a real outcome. Like the real export it has cancellations ("C" invoices with a
negative quantity), guest lines without a customer id and bad-debt adjustments with a
negative price; the contract in `examples/retailer` quarantines the last two.

The same seed gives the same bytes. The user's own configuration for this retailer
(contract, identity, features) is `RETAILER_EXAMPLE`, the worked example of the README.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RETAILER_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "retailer"
HEADER = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
START = dt.datetime(2010, 12, 1)
END = dt.datetime(2011, 12, 10)  # the export date: the data ends the day before
_WORDS = ("WHITE", "HANGING", "HEART", "LANTERN", "JUMBO", "BAG", "RED", "RETROSPOT", "VINTAGE", "MUG", "CAKE",
          "STAND", "PARTY", "BUNTING", "GLASS", "STAR", "T-LIGHT", "HOLDER", "LUNCH", "BOX")  # fmt: skip
_COUNTRIES = ("United Kingdom",) * 8 + ("Germany", "France", "EIRE", "Spain", "Netherlands")


@dataclass(frozen=True)
class RetailerDrop:
    """What was written, for a test to reconcile against."""

    path: Path  # the CSV
    rows: int  # data rows in the file
    guest_rows: int  # lines without a customer id
    bad_debt_rows: int  # lines with a negative price
    customers: int  # distinct customer ids on the accepted lines
    export_date: dt.date


def _catalogue(rng: np.random.Generator, n: int) -> list[tuple[str, str, float]]:
    codes = [f"{21000 + 37 * i}{'AB'[i % 2] if i % 5 == 0 else ''}" for i in range(n)]
    names = [" ".join(rng.choice(_WORDS, size=3, replace=False)) for _ in range(n)]
    prices = np.round(np.exp(rng.normal(0.8, 0.7, size=n)), 2).clip(0.29, 39.95)
    return list(zip(codes, names, (float(p) for p in prices), strict=True))


def write_retailer_drop(folder: Path, customers: int = 300, products: int = 40, seed: int = 7) -> RetailerDrop:
    """Write `online_retail.csv` and the drop's `manifest.json` (its export date) into `folder`."""
    rng = np.random.default_rng(seed)
    catalogue = _catalogue(rng, products)
    popularity = rng.dirichlet(np.full(products, 0.6))
    days = (END - START).days - 1
    lines: list[tuple[dt.datetime, list[str]]] = []
    invoice = 489434
    for c in range(customers):
        customer_id = str(12346 + 3 * c)
        country = str(rng.choice(_COUNTRIES))
        rate = rng.gamma(1.5, 0.02)  # purchases per day while alive
        dropout = rng.beta(1.0, 5.0)  # chance of never coming back after a purchase
        taste = rng.dirichlet(popularity * 30 + 0.05)  # each customer prefers some products
        t = START + dt.timedelta(days=float(rng.uniform(0, days * 0.8)))
        while t < END - dt.timedelta(days=1):
            at = t.replace(hour=int(rng.integers(8, 19)), minute=int(rng.integers(0, 60)), second=0, microsecond=0)
            invoice += 1
            picked = rng.choice(products, size=int(rng.integers(1, 6)), replace=False, p=taste)
            for p in picked:
                code, name, price = catalogue[p]
                qty = int(rng.choice([1, 2, 3, 4, 6, 12, 24]))
                lines.append((at, [str(invoice), code, name, str(qty), f"{at:%Y-%m-%d %H:%M:%S}", f"{price:.2f}",
                                   customer_id, country]))  # fmt: skip
            if rng.random() < 0.04:  # a cancellation of the invoice's first line, a few days later
                later = at + dt.timedelta(days=int(rng.integers(1, 10)))
                if later < END - dt.timedelta(days=1):
                    code, name, price = catalogue[picked[0]]
                    lines.append((later, [f"C{invoice}", code, name, "-1", f"{later:%Y-%m-%d %H:%M:%S}",
                                          f"{price:.2f}", customer_id, country]))  # fmt: skip
            if rng.random() < dropout:
                break
            t += dt.timedelta(days=float(rng.exponential(1 / rate)))
    accepted_ids = {row[6] for _, row in lines}
    guests = 0
    for _ in range(max(1, len(lines) // 20)):  # walk-in customers: lines without a customer id
        at = START + dt.timedelta(days=float(rng.uniform(0, days)))
        code, name, price = catalogue[int(rng.integers(products))]
        invoice += 1
        lines.append((at, [str(invoice), code, name, "1", f"{at:%Y-%m-%d %H:%M:%S}", f"{price:.2f}", "", "EIRE"]))
        guests += 1
    bad_debt = 2
    for k in range(bad_debt):  # "Adjust bad debt": a negative price, quarantined by the contract's min: 0
        at = START + dt.timedelta(days=100 + 50 * k)
        row = [f"A{563185 + k}", "B", "Adjust bad debt", "1", f"{at:%Y-%m-%d %H:%M:%S}", "-11062.06"]
        lines.append((at, [*row, sorted(accepted_ids)[k], "United Kingdom"]))
    lines.sort(key=lambda x: (x[0], x[1][0]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "online_retail.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(row for _, row in lines)
    (folder / "manifest.json").write_text(json.dumps({"export_date": f"{END:%Y-%m-%d}"}), encoding="utf-8")
    return RetailerDrop(path, len(lines), guests, bad_debt, len(accepted_ids), END.date())
