"""One table of identity records from every source that knows who a customer is."""

from __future__ import annotations

import pandas as pd

from features.identity.normalise import fold_names, normalise_emails, normalise_phones, split_full_names

IDENTITY_COLUMNS = [
    "record_key", "source_table", "record_id", "first_name", "last_name", "email", "phone",
    "birth_date", "address", "postcode", "city", "state", "gender", "billing_key",
]  # fmt: skip


def _frame(source: str, record_id: pd.Series, **cols: pd.Series) -> pd.DataFrame:
    out = pd.DataFrame({"source_table": source, "record_id": record_id.astype("string")})
    out["record_key"] = source + ":" + out["record_id"]
    for name in IDENTITY_COLUMNS:
        if name not in out:
            value = cols.get(name)
            out[name] = (
                value.astype("string") if value is not None else pd.Series(pd.NA, index=out.index, dtype="string")
            )
    return out[IDENTITY_COLUMNS]


def assemble_identity_records(crm: pd.DataFrame, billing: pd.DataFrame, acquired: pd.DataFrame) -> pd.DataFrame:
    """Normalised identity fields of CRM accounts, billing accounts and the acquired book.

    Inputs are the lake tables (`crm_accounts`, `billing_accounts`, `northwind_customers`);
    the output has one row per source record, keyed `<source_table>:<record id>`.
    """
    holder = split_full_names(billing["account_holder"])
    acquired_names = split_full_names(acquired["full_name"])
    frames = [
        _frame(
            "crm_accounts",
            crm["crm_id"],
            first_name=fold_names(crm["first_name"]),
            last_name=fold_names(crm["last_name"]),
            email=normalise_emails(crm["email"]),
            phone=normalise_phones(crm["phone"]),
            birth_date=crm["birth_date"].astype("string"),
            address=fold_names(crm["address_line"]),
            postcode=crm["postcode"],
            city=fold_names(crm["city"]),
            state=crm["state"].str.upper(),
            gender=crm["gender"],
            billing_key=crm["billing_account_id"],
        ),
        _frame(
            "billing_accounts",
            billing["billing_account_id"],
            first_name=holder["first_name"],
            last_name=holder["last_name"],
            email=normalise_emails(billing["email"]),
            phone=normalise_phones(billing["phone"]),
            address=fold_names(billing["billing_address"]),
            postcode=billing["postcode"],
            city=fold_names(billing["city"]),
            state=billing["state"].str.upper(),
            billing_key=billing["billing_account_id"],
        ),
        _frame(
            "northwind_customers",
            acquired["customer_no"],
            first_name=acquired_names["first_name"],
            last_name=acquired_names["last_name"],
            email=normalise_emails(acquired["email"]),
            phone=normalise_phones(acquired["phone"]),
            birth_date=acquired["birth_date"].astype("string"),
            address=fold_names(acquired["address_line"]),
            postcode=acquired["postcode"],
            city=fold_names(acquired["city"]),
            state=acquired["state"].str.upper(),
            gender=acquired["gender"],
        ),
    ]
    return pd.concat(frames, ignore_index=True)
