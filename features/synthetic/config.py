"""The generator's knobs, validated."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class WorldConfig(BaseModel):
    """Everything that shapes a synthetic world. Same config, same bytes."""

    customers: int = Field(default=20_000, ge=10, description="True persons in the world.")
    seed: int = Field(default=7, ge=0)
    window_start: dt.date = Field(default=dt.date(2024, 1, 1), description="First month the source systems export.")
    months: int = Field(default=24, ge=6, le=60, description="Months of activity exported.")
    duplicate_rate: float = Field(default=0.2, ge=0, le=0.9, description="Share of persons with extra CRM records.")
    typo_rate: float = Field(
        default=0.08,
        ge=0,
        le=0.5,
        description="Chance that an identity field of a secondary record (CRM duplicate, "
        "billing account, acquired record) carries a typo; primary records get a fifth of it.",
    )
    missing_rate: float = Field(default=0.05, ge=0, le=0.5, description="Base chance an optional field is empty.")
    malformed_rate: float = Field(
        default=0.003, ge=0, le=0.2, description="Share of rows per table deliberately broken."
    )
    duplicate_row_rate: float = Field(
        default=0.004, ge=0, le=0.2, description="Share of rows exported twice (event tables)."
    )
    late_rate: float = Field(default=0.03, ge=0, le=0.5, description="Share of events that arrive days or weeks late.")
    acquired_share: float = Field(
        default=0.15,
        ge=0,
        le=0.9,
        description="Share of persons who came from the acquired company (Northwind).",
    )
    acquisition_date: dt.date = Field(default=dt.date(2024, 7, 1))
    offer_test_date: dt.date = Field(default=dt.date(2025, 3, 1), description="Start of the retention-offer A/B test.")
    offer_test_share: float = Field(
        default=0.9,
        ge=0.01,
        le=1.0,
        description="Share of the eligible (at-risk, non-premium) customers enrolled in the offer test, "
        "split half treatment, half control.",
    )
    bias_strength: float = Field(
        default=0.0,
        ge=0,
        le=3,
        description="How strongly the protected group's outcome and features are skewed.",
    )
    bias_attribute: Literal["gender", "age_band", "region"] = "gender"
    bias_group: str = Field(default="F", description="The protected group's value.")
    drift_date: dt.date | None = Field(default=None, description="After this date the population and behaviour shift.")
    drift_strength: float = Field(default=0.0, ge=0, le=3)
    outbreak_topic: str | None = Field(
        default=None,
        description="Planted ticket topic whose tickets surge from outbreak_start (a topic id of "
        "features.synthetic.tickets.TICKET_TOPICS, e.g. technical_app_update_login, new when it starts). "
        "None: no outbreak.",
    )
    outbreak_start: dt.date | None = Field(default=None, description="First day of the planted outbreak.")
    outbreak_strength: float = Field(
        default=0.25,
        gt=0,
        le=5,
        description="Extra outbreak tickets per day, as a share of the normal daily ticket volume.",
    )
    outbreak_days: int = Field(default=42, ge=1, le=400, description="How long the outbreak lasts, in days.")
    chunk_size: int = Field(
        default=50_000,
        ge=1_000,
        description="Persons simulated per chunk. Part of the world's identity: changing it changes the bytes.",
    )

    @model_validator(mode="after")
    def _check_dates(self) -> WorldConfig:
        end = self.window_end
        if not self.window_start <= self.acquisition_date < end:
            raise ValueError("acquisition_date must fall inside the exported window")
        if not self.window_start <= self.offer_test_date < end:
            raise ValueError("offer_test_date must fall inside the exported window")
        if self.offer_test_date.day != 1:
            raise ValueError("offer_test_date must be the first day of a month")
        if self.drift_date is not None and not self.window_start < self.drift_date < end:
            raise ValueError("drift_date must fall inside the exported window")
        if (self.outbreak_topic is None) != (self.outbreak_start is None):
            raise ValueError("outbreak_topic and outbreak_start go together: set both or neither")
        if self.outbreak_start is not None and not self.window_start < self.outbreak_start < end:
            raise ValueError("outbreak_start must fall inside the exported window")
        if self.outbreak_topic is not None:
            from features.synthetic.tickets import TICKET_TOPICS  # the taxonomy imports nothing of the config

            if self.outbreak_topic not in TICKET_TOPICS:
                raise ValueError(f"outbreak_topic {self.outbreak_topic!r} is not a planted topic")
        if self.window_start.day != 1:
            raise ValueError("window_start must be the first day of a month")
        return self

    @property
    def window_end(self) -> dt.date:
        """The export date: the first day after the last exported month."""
        total = self.window_start.month - 1 + self.months
        return dt.date(self.window_start.year + total // 12, total % 12 + 1, 1)

    def month_index(self, day: dt.date) -> int:
        """Index of the month that contains `day`, counted from window_start."""
        return (day.year - self.window_start.year) * 12 + day.month - self.window_start.month
