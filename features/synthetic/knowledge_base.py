"""The knowledge base agents search: articles, and the truth of which article resolves which ticket topic.

Articles are written the way an agent or a support writer would word them, not the way customers do:
"duplicate transaction" where a customer writes "charged twice", "hub" for "router", "handset" for
"phone". Ranking them for a ticket is therefore not a matter of copying words back.

Some topics of the taxonomy (`features.synthetic.tickets.TICKET_TOPICS`) are deliberately left without
an article (`UNCOVERED_TOPICS`, the outbreak's new topic among them): those are the ones a
knowledge-base review should find and suggest a new article for. A few distractor articles resolve
no topic at all. The catalogue's content is fixed; the seed only numbers and orders the articles, as
two companies' knowledge bases would.

Written into the drop as `knowledge_base/articles.csv` (the knowledge-base system's export, checked by
its contract like any source table: non-personal reference data) and the truth as
`_truth/kb_resolution.parquet`: one row per (topic, resolving article); an uncovered topic has one row
with no article.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.synthetic.config import WorldConfig
from features.synthetic.tickets import TICKET_TOPICS

KB_FILE = "knowledge_base/articles.csv"
KB_TRUTH_FILE = "kb_resolution.parquet"


@dataclass(frozen=True)
class ArticleDraft:
    """An article's text and the topics it resolves (none for a distractor)."""

    resolves: tuple[str, ...]
    title: str
    body: str


ARTICLE_DRAFTS: tuple[ArticleDraft, ...] = (
    # billing
    ArticleDraft(
        ("billing_double_charge",),
        "Duplicate transactions on a customer's bill",
        "When the same amount is billed more than once in a cycle, open the payment history and look for a "
        "repeated transaction. A duplicate authorisation from a retried card payment falls away by itself "
        "within five working days. A duplicate that has settled is reversed: raise a refund to the original "
        "payment method from the billing console and quote the transaction reference to the customer.",
    ),
    ArticleDraft(
        ("billing_double_charge",),
        "Refunding an overpayment",
        "Money collected in error (a payment taken twice, a credit not applied before collection) is returned "
        "to the card or bank account that paid it. Refunds reach the customer's statement in three to five "
        "working days. Never refund to a different account than the one debited.",
    ),
    ArticleDraft(
        ("billing_price_rise",),
        "Annual tariff adjustment",
        "Monthly plan prices are reviewed every April in line with inflation. Customers are notified by "
        "letter or email thirty days before the new tariff applies. If a customer says they were never told, "
        "check the contact preferences; where the notice was not sent, apply a one-off goodwill credit for "
        "the difference and explain the customer's right to leave without penalty.",
    ),
    ArticleDraft(
        ("billing_price_rise",),
        "Why an invoice can be higher than usual",
        "A bigger invoice usually comes from usage outside the allowance, the end of a promotional period, a "
        "pro-rata charge after a plan change, or the yearly tariff adjustment. Walk the customer through the "
        "itemised statement line by line and compare it with the previous month.",
    ),
    ArticleDraft(
        ("billing_missing_discount",),
        "Applying promotional and loyalty credits",
        "Retention and loyalty reductions appear as a credit line on the next invoice once the agent records "
        "the offer code on the account. If the reduction is absent, confirm the offer was saved, back-date the "
        "credit to the start of the agreed period and note the offer reference on the account.",
    ),
    ArticleDraft(
        ("billing_autopay_failure",),
        "Direct debit and recurring card collection failures",
        "Recurring payments are collected on the due date. The bank can return a collection (insufficient "
        "funds, mandate cancelled, expired card). Check the mandate status, ask the customer to update the "
        "payment method in the app, retry the collection, and waive the late-payment charge once in any "
        "twelve months.",
    ),
    # technical
    ArticleDraft(
        ("technical_wifi_dropouts",),
        "Unstable broadband: router (hub) troubleshooting",
        "If the home broadband link keeps going down, check the hub's status light: orange or flashing "
        "means the line is resynchronising. Move the hub away from other electronics, change the wireless "
        "channel and run a line test from the diagnostics tool. Send a new hub when it loses sync more than "
        "ten times a day.",
    ),
    ArticleDraft(
        ("technical_wifi_dropouts", "technical_slow_speed"),
        "Improving wireless coverage at home",
        "Weak or patchy wireless in some rooms is usually distance or interference. Place the hub high and "
        "central, use the 5 GHz band near the hub, and offer a mesh extender for larger homes. A wired "
        "connection tells apart a wireless problem from a line fault.",
    ),
    ArticleDraft(
        ("technical_slow_speed",),
        "Slow broadband: throughput below the guaranteed minimum",
        "Every plan carries a minimum guaranteed download rate. Ask the customer for a wired speed check at "
        "the hub at peak and off-peak times. If throughput stays under the guaranteed minimum for three days, "
        "open a performance fault; under the speed guarantee the customer may exit without penalty.",
    ),
    ArticleDraft(
        ("technical_setup_error",),
        "New service activation: common error codes",
        "Activation codes starting with E1 mean the order is not yet provisioned: wait two hours and retry. "
        "Codes starting with E3 or E4 mean the equipment serial does not match the order: correct the serial "
        "in the order system. If the installer wizard hangs, power-cycle the equipment and start again.",
    ),
    ArticleDraft(
        ("technical_tv_streaming",),
        "Set-top box freezing, pixelation or blank screen",
        "For a set-top box that stutters, pixelates or shows a blank screen, check the HDMI cable and the "
        "input source first, then restart the box from the mains. If programmes are absent from the guide, "
        "run a channel rescan; a factory reset clears a corrupted guide. Replace the box when it overheats.",
    ),
    # network
    ArticleDraft(
        ("network_home_outage",),
        "No signal at home: checking for an outage in the area",
        "Look up the customer's postcode on the network status map. If a mast or exchange incident is listed, "
        "give the estimated restoration time and register the customer for updates; automatic compensation "
        "applies after 48 hours. If no incident shows, run remote diagnostics on the line and the SIM.",
    ),
    ArticleDraft(
        ("network_home_outage", "cancel_poor_service"),
        "Compensation for loss of service",
        "Customers without service for more than two full days receive a daily credit on their next bill. "
        "Incidents on the status map are credited automatically; for a local fault, record the dates the "
        "service was lost and apply the credit by hand.",
    ),
    ArticleDraft(
        ("network_dropped_calls",),
        "Dropped calls: voice calls disconnecting",
        "If voice calls cut out or end unexpectedly mid-call, ask whether it happens in one location or "
        "everywhere. Enable Wi-Fi "
        "calling for indoor locations, check that VoLTE is provisioned on the line, reset the handset's "
        "network settings, and report a coverage fault listing the locations affected.",
    ),
    # account
    ArticleDraft(
        ("account_change_details",),
        "Updating a customer's postal address, email or phone",
        "Verify the account holder first (security questions or a one-time passcode). The correspondence "
        "address, contact email and mobile number can then be amended in the customer profile; a new "
        "service address for broadband is a home move order, not a profile change.",
    ),
    ArticleDraft(
        ("account_password_reset",),
        "Customer cannot sign in: resetting credentials",
        "Reset messages go to the registered email or by SMS. If the message is not delivered, check the "
        "junk folder and that the registered email is correct, then send a new one from the admin console. "
        "After five failed attempts the profile is locked for thirty minutes; an agent can unlock it after "
        "verifying the holder.",
    ),
    # device
    ArticleDraft(
        ("device_screen_damage",),
        "Handset insurance: claims for accidental damage",
        "Accidental damage such as a broken display is covered by device protection. Start the claim in the "
        "claims portal with the handset's IMEI; the excess is taken when the claim is approved and a courier "
        "collects the handset for repair or exchange.",
    ),
    ArticleDraft(
        ("device_faulty_replacement",),
        "Faulty replacement handsets (dead on arrival)",
        "If an exchange handset is defective (will not power on, reboots by itself), log a dead-on-arrival "
        "return within fourteen days. Send a prepaid return label and dispatch a new unit from stock; after "
        "a second defective unit, offer a different model.",
    ),
    # cancellation
    ArticleDraft(
        ("cancel_competitor_price",),
        "Retention: customers weighing a rival provider's offer",
        "When a customer mentions a rival's lower price, check eligibility for a retention offer before "
        "processing the termination. Compare like for like (data, contract length, device) and record the "
        "rival's offer. If the customer still wants to go, process the notice and give the porting code.",
    ),
    ArticleDraft(
        ("cancel_moving_abroad",),
        "Closing an account when moving abroad",
        "Customers relocating overseas may close the account and end the contract early without the early "
        "termination fee, with proof of the new address. Issue the final bill, stop the recurring collection "
        "after it and remind the customer to return any rented equipment.",
    ),
    ArticleDraft(
        ("cancel_poor_service",),
        "Customers who want to leave over poor service or repeated faults",
        "Acknowledge the complaint and read the fault history before anything else. Offer to escalate to the "
        "complaints team, apply a goodwill credit for the faults, and explain that repeated unresolved faults "
        "allow the customer to end the contract without a fee.",
    ),
    # distractors: real articles that resolve none of the planted topics
    ArticleDraft(
        (),
        "Ordering a replacement SIM card",
        "A lost or damaged SIM is replaced free of charge once "
        "the holder is verified. The new SIM arrives in two working days and is activated from the app.",
    ),
    ArticleDraft(
        (),
        "Porting a number from another network",
        "Ask the customer for the porting code from the "
        "previous provider; the number moves within one working day and the old contract ends automatically.",
    ),
    ArticleDraft(
        (),
        "Paperless billing and statement preferences",
        "Customers can switch to paperless "
        "statements in the app; a paper statement carries a monthly charge unless the customer is exempt.",
    ),
    ArticleDraft(
        (),
        "Parental controls and content filters",
        "Content filters are switched on in the account "
        "settings for each line; a PIN protects the settings from being changed by children.",
    ),
    ArticleDraft(
        (),
        "Data allowance and usage alerts",
        "Usage alerts are sent at 80% and 100% of the monthly "
        "data allowance. Extra data can be bought as a bolt-on that expires at the end of the bill period.",
    ),
)

# Topics no article resolves, on purpose: what a knowledge-base review should find.
UNCOVERED_TOPICS: tuple[str, ...] = tuple(t for t in TICKET_TOPICS if not any(t in d.resolves for d in ARTICLE_DRAFTS))


def knowledge_base(cfg: WorldConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalogue (article_id, title, body) and its truth (topic, article_id; null for an uncovered topic).

    Article ids and the catalogue's order come from the seed (its own stream, so no other draw moves).
    """
    rng = np.random.default_rng([cfg.seed, 0x4B42])  # "KB"
    numbers = rng.choice(np.arange(1000, 10_000), len(ARTICLE_DRAFTS), replace=False)
    ids = [f"KB-{n}" for n in numbers]
    order = rng.permutation(len(ARTICLE_DRAFTS))
    articles = pd.DataFrame(
        {
            "article_id": [ids[i] for i in order],
            "title": [ARTICLE_DRAFTS[i].title for i in order],
            "body": [ARTICLE_DRAFTS[i].body for i in order],
        }
    )
    pairs: list[tuple[str, str | None]] = [(t, ids[i]) for i, d in enumerate(ARTICLE_DRAFTS) for t in d.resolves]
    pairs += [(t, None) for t in UNCOVERED_TOPICS]
    truth = pd.DataFrame(pairs, columns=["topic", "article_id"]).astype({"article_id": "string"})
    truth["covered"] = truth["article_id"].notna()
    truth = truth.sort_values(["topic", "article_id"], na_position="first").reset_index(drop=True)
    return articles, truth


def write_knowledge_base(cfg: WorldConfig, out_dir: Path, truth_dir: Path) -> int:
    """Write the catalogue into the drop and its truth beside the other truth files; the number of articles."""
    articles, truth = knowledge_base(cfg)
    path = Path(out_dir) / KB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    articles.to_csv(path, index=False, lineterminator="\n")
    truth.to_parquet(Path(truth_dir) / KB_TRUTH_FILE, index=False)
    return len(articles)
