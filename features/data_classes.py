"""Data classes: what kind of personal data each contract column and each feature is, and what may leave.

Every contract column (`class` in the contract YAML) and every feature declares one of five
classes, so a reviewer can see where each kind of data goes and the code can enforce it:

- `direct_identifier`: names a person on its own (name, email, phone, address, national id,
  a source system's record id). Never in MLflow-logged rows, monitoring samples, the inference
  log or reports: `without_direct_identifiers` strips them where those are written.
- `quasi_identifier`: identifies in combination (birth date, age, postcode, gender, city, region).
- `sensitive`: special-category or protected-group data (health, ethnicity, religion, ...).
- `behavioural`: what the person did (events, transactions, tickets, answers).
- `inferred`: what someone computed about the person (scores, segments).

The customer key (`SUBJECT_KEY`) is not a column of any contract: it is the platform's pseudonym,
made by identity resolution. It names nobody outside the platform, so it stays in logged rows:
that is how an access or erasure request finds them. Exports replace it with a keyed pseudonym.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, cast, get_args

import pandas as pd

if TYPE_CHECKING:
    from custintel.settings import Settings
    from features.contracts import Contract
    from features.featurestore.config import FeatureConfig

DataClass = Literal["direct_identifier", "quasi_identifier", "sensitive", "behavioural", "inferred"]
DATA_CLASSES: tuple[str, ...] = ("direct_identifier", "quasi_identifier", "sensitive", "behavioural", "inferred")
assert DATA_CLASSES == get_args(DataClass)
DIRECT_IDENTIFIER: DataClass = "direct_identifier"
# The platform's pseudonym of a person (see the module docstring): kept in logged rows, never classed.
SUBJECT_KEY = "customer_key"


class DataClassError(ValueError):
    """A column or feature declares no class, or one that is not a data class; the message names it."""


def check_data_class(value: object, where: str) -> DataClass:
    """`value` as a data class, or a `DataClassError` naming `where` (the column or feature) and the allowed values."""
    allowed = ", ".join(DATA_CLASSES)
    if value is None or value == "":
        raise DataClassError(f"{where}: declares no data class ('class'); use one of {allowed}")
    if value not in DATA_CLASSES:
        raise DataClassError(f"{where}: unknown data class {value!r}; use one of {allowed}")
    return cast(DataClass, value)


def contract_classes(contract: Contract) -> dict[str, str]:
    """Each column of a contract (by its lake name) and its class."""
    return {rule.name: rule.data_class for rule in contract.columns}


def lake_classes(settings: Settings) -> dict[str, dict[str, str]]:
    """Each lake table's columns and their classes, from the contracts the lake remembers (else the shipped ones).

    Tables the lake holds are read by the contract they were landed under; shipped contracts of
    tables not landed yet are listed too, so a reviewer sees every class before the first drop.
    """
    from features.contracts import load_contracts
    from features.lake import IngestError, lake_contract, read_manifest

    manifest = read_manifest(settings)
    out = {c.table: contract_classes(c) for c in load_contracts().contracts}
    for table in sorted({*manifest.tables, *manifest.contracts}):
        try:
            out[table] = contract_classes(lake_contract(settings, table, manifest))
        except IngestError:  # landed before manifests remembered contracts, and none shipped: nothing to show
            continue
    return dict(sorted(out.items()))


def feature_classes(feature_config: FeatureConfig) -> dict[str, str]:
    """Each feature the configuration defines (and the interactions' columns) and its class.

    A feature's class comes from its definition; the configuration's `classes` may reclassify
    (never declassify: the values are checked like a definition's).
    """
    from features.featurestore.definitions import INTERACTION_FEATURES, feature_sets

    out = {f.name: f.data_class for fs in feature_sets(feature_config) for f in fs.features}
    out.update({f.name: f.data_class for f in INTERACTION_FEATURES})
    out.update(feature_config.classes)
    return out


def direct_identifiers(columns: Iterable[str], classes: Mapping[str, str]) -> list[str]:
    """The columns among `columns` classed as direct identifiers, in their order."""
    return [str(c) for c in columns if classes.get(str(c)) == DIRECT_IDENTIFIER]


def without_direct_identifiers(frame: pd.DataFrame, classes: Mapping[str, str]) -> pd.DataFrame:
    """The frame without its direct-identifier columns (`classes`: column -> class; unclassed columns stay).

    Unclassed columns are the subject key, labels, scores and cutoffs: not identifying on their own.
    """
    drop = direct_identifiers(frame.columns, classes)
    return frame.drop(columns=drop) if drop else frame


def check_no_direct_identifiers(frame: pd.DataFrame, classes: Mapping[str, str], where: str) -> None:
    """Refuse a frame about to be written to `where` that holds a direct-identifier column (names it)."""
    found = direct_identifiers(frame.columns, classes)
    if found:
        raise DataClassError(
            f"{where}: column(s) {', '.join(found)} are direct identifiers and may not be logged or exported"
        )


# Names of columns a person can be told by, for a user's own table whose columns nobody classed.
_NUMBER = r"([_\s.-]?(no|num|number|nr|address|addr))?$"
_DIRECT_NAME = re.compile(
    # Named for what they hold, not what is counted about them: `phone`, `email_address`, not `phone_calls_90d`.
    rf"((tele)?phone{_NUMBER}|e[-_ ]?mail{_NUMBER}|mobile{_NUMBER}|(^|[_\s.-])(cell|fax|tel){_NUMBER}|"
    r"^(first|last|full|given|family|middle|sur|user|customer|account|holder|contact|person)?[_\s.-]?name$|"
    r"(address|street)([_\s.-]?line)?([_\s.-]?\d)?$|(^|[_\s.-])ssn$|social[_\s.-]?security|passport|"
    r"national[_\s.-]?id|tax[_\s.-]?id|iban|card[_\s.-]?number|ip[_\s.-]?addr|^ip$)",
    re.IGNORECASE,
)
_QUASI_NAME = re.compile(
    r"(birth|dob|(^|[_\s.-])age(s|_?years|_?band|_?group)?($|[_\s.-])|senior|postcode|post_code|postal|zip|"
    r"gender|(^|[_\s.-])sex($|[_\s.-])|(^|[_\s.-]|home|billing)(city|state|region|county|country)($|[_\s.-]|code)|"
    r"nationality|marital)",
    re.IGNORECASE,
)
_SENSITIVE_NAME = re.compile(
    r"(ethnic|race|religio|health|disab|diagnos|pregnan|sexual|orientation|union_member|politic|biometric|"
    r"genetic|criminal|medical)",
    re.IGNORECASE,
)
_INFERRED_NAME = re.compile(r"(score|segment|cluster|propensity|predict|probability|persona|risk)", re.IGNORECASE)


def infer_data_class(name: str, kind: str) -> DataClass:
    """A class for an own-table column nobody classed, from its name and inferred type.

    Emails, phones, names, addresses and identifiers (`kind` "id") are direct identifiers;
    birth dates, ages, postcodes, gender and places are quasi-identifiers; health, ethnicity
    and the like are sensitive; scores and segments are inferred; the rest is behavioural.
    A `--schema` file sets the class of any column the names get wrong.
    """
    # A yes/no column named like a phone or an address ("PhoneService") says whether, not which.
    if kind == "id" or (_DIRECT_NAME.search(name) and kind != "boolean"):
        return "direct_identifier"
    if _SENSITIVE_NAME.search(name):
        return "sensitive"
    if _QUASI_NAME.search(name):
        return "quasi_identifier"
    if _INFERRED_NAME.search(name):
        return "inferred"
    return "behavioural"


def classes_by_class(classes: Mapping[str, str]) -> dict[str, list[str]]:
    """Names grouped per class, in the classes' order (for the console and the cards)."""
    out: dict[str, list[str]] = {c: [] for c in DATA_CLASSES}
    for name, data_class in classes.items():
        out.setdefault(data_class, []).append(name)
    return {c: sorted(names) for c, names in out.items() if names}
