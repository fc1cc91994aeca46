"""Ticket text with planted topics, planted personal data and an optional outbreak.

Every support ticket belongs to one of the six categories the ticketing system
exports; inside its category it is about one planted *topic* (a double charge, an
outage at home, a cracked screen, ...). The topic taxonomy below is public: the
knowledge-base catalogue and the evaluation of topic models and emerging-issue
alerts are built on it. The truth (`_truth/ticket_text.parquet`) records each
ticket's topic, whether it belongs to a planted outbreak and the personal data
(name, email, phone) planted in its text.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.synthetic import reference as ref

if TYPE_CHECKING:
    from features.synthetic.config import WorldConfig


@dataclass(frozen=True)
class TicketTopic:
    """One planted ticket topic: its category, a readable label and the phrases that mark it."""

    topic_id: str
    category: str
    label: str
    key_phrases: tuple[str, ...]
    weight: float = 1.0  # relative frequency inside its category; 0 = only ever planted by an outbreak


_TOPICS = [
    # billing
    TicketTopic(
        "billing_double_charge",
        "billing",
        "Charged twice for the same thing",
        ("charged twice", "double charge", "duplicate payment", "refund the second charge"),
        1.2,
    ),
    TicketTopic(
        "billing_price_rise",
        "billing",
        "Bill went up without notice",
        ("bill went up", "price increase", "higher than last month", "no notice of the increase"),
        1.0,
    ),
    TicketTopic(
        "billing_missing_discount",
        "billing",
        "Promised discount not applied",
        ("discount missing", "promo not applied", "loyalty discount", "promised a discount"),
        0.8,
    ),
    TicketTopic(
        "billing_autopay_failure",
        "billing",
        "Autopay / direct debit failed",
        ("autopay failed", "direct debit failed", "late fee", "payment declined"),
        0.7,
    ),
    # technical
    TicketTopic(
        "technical_wifi_dropouts",
        "technical",
        "Broadband keeps disconnecting",
        ("wifi keeps dropping", "router disconnects", "connection drops", "lights blinking on the router"),
        1.2,
    ),
    TicketTopic(
        "technical_slow_speed",
        "technical",
        "Internet much slower than the plan",
        ("slow speeds", "speed test", "paying for 500 mbps", "pages take ages to load"),
        1.0,
    ),
    TicketTopic(
        "technical_setup_error",
        "technical",
        "Setup / activation fails with an error",
        ("setup fails", "activation error", "error code", "installation stuck"),
        0.8,
    ),
    TicketTopic(
        "technical_tv_streaming",
        "technical",
        "TV box buffering or no picture",
        ("tv box", "buffering", "no picture", "channels missing"),
        0.6,
    ),
    TicketTopic(
        "technical_app_update_login",
        "technical",
        "App update breaks login",
        ("since the app update", "new version", "login screen crashes", "reinstalled the app"),
        0.0,  # not part of the normal mix: the default outbreak topic, new when it starts
    ),
    # network
    TicketTopic(
        "network_home_outage",
        "network",
        "No service at home / outage in the area",
        ("no signal at home", "outage in my area", "neighbours have the same problem", "nothing works"),
        1.3,
    ),
    TicketTopic(
        "network_dropped_calls",
        "network",
        "Calls keep dropping",
        ("dropped calls", "calls cut out", "call drops mid conversation", "cannot hear the other person"),
        1.0,
    ),
    TicketTopic(
        "network_roaming",
        "network",
        "Roaming not working abroad",
        ("roaming", "abroad", "no data while travelling", "roaming charges"),
        0.6,
    ),
    # account
    TicketTopic(
        "account_change_details",
        "account",
        "Change address or contact details",
        ("update my address", "change the email on my account", "moved house", "new contact details"),
        1.2,
    ),
    TicketTopic(
        "account_password_reset",
        "account",
        "Password reset link never arrives",
        ("password reset", "reset link", "locked out of my account", "verification code"),
        1.0,
    ),
    TicketTopic(
        "account_authorised_user",
        "account",
        "Add an authorised user",
        ("authorised user", "add my partner", "second account holder", "permission to manage"),
        0.6,
    ),
    # device
    TicketTopic(
        "device_screen_damage",
        "device",
        "Cracked screen / insurance claim",
        ("screen cracked", "dropped my phone", "insurance claim", "is it covered"),
        1.0,
    ),
    TicketTopic(
        "device_faulty_replacement",
        "device",
        "Replacement device is faulty",
        ("replacement device", "faulty", "does not turn on", "sent back"),
        0.8,
    ),
    TicketTopic(
        "device_battery_drain",
        "device",
        "Battery drains fast",
        ("battery drains", "battery dies", "overheating", "charge lasts"),
        0.8,
    ),
    # cancellation
    TicketTopic(
        "cancel_competitor_price",
        "cancellation",
        "Leaving for a cheaper competitor",
        ("cancel", "competitor offers", "cheaper elsewhere", "switch provider"),
        1.0,
    ),
    TicketTopic(
        "cancel_moving_abroad",
        "cancellation",
        "Closing the account: moving away",
        ("close my account", "moving abroad", "relocating", "no coverage where I am moving"),
        0.6,
    ),
    TicketTopic(
        "cancel_poor_service",
        "cancellation",
        "Cancelling over poor service",
        ("terrible service", "fed up", "cancel everything", "want to leave"),
        0.9,
    ),
]

TICKET_TOPICS: dict[str, TicketTopic] = {t.topic_id: t for t in _TOPICS}
"""The planted topic taxonomy: topic id -> category, readable label, key phrases, weight in its category."""

DEFAULT_OUTBREAK_TOPIC = "technical_app_update_login"

# Templates per topic. `<a|b|c>` picks one alternative, `{slot}` takes a filler (see _SLOTS).
TOPIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing_double_charge": (
        "I was charged twice for {product} this month, please refund the second charge.",
        "<Double charge|Duplicate payment> on my <card|bank statement> for ${amount}, <why?|what happened?>",
        "You took the payment twice on {day}. ${amount} each time. I want my money back",
        "my bill shows the same charge of ${amount} two times",
        "Charged twice again!! this is the {n}nd time a duplicate payment has gone out",
        "There are two identical charges for {product} on my statement, please reverse one",
    ),
    "billing_price_rise": (
        "My bill went up by ${amount} without any notice. Why?",
        "<Why is|How come> my bill higher than last month? Nobody told me about a price increase",
        "The price of {product} increased by ${amount} and I never agreed to it",
        "bill went up again, ${amount} more than usual. no notice of the increase",
        "Unexpected price rise on my plan this month, <please explain|I want an explanation>",
        "you raised my monthly price without telling me, it used to be ${amount} less",
    ),
    "billing_missing_discount": (
        "The discount I was promised is not on my invoice",
        "I was promised a {n}0% loyalty discount when I renewed, it's missing from the bill",
        "Promo not applied to {product}, the agent said I'd get ${amount} off",
        "discount missing again this month, please apply the loyalty discount",
        "Where is my promo code discount? The invoice shows full price",
    ),
    "billing_autopay_failure": (
        "Autopay failed again; I don't want a late fee.",
        "My direct debit failed on {day} even though there is money in the account",
        "<Payment declined|Card declined> when autopay ran, now I have a late fee of ${amount}",
        "why did the automatic payment fail? please remove the late fee",
        "Direct debit bounced and you charged me a late fee, the bank says nothing was requested",
    ),
    "technical_wifi_dropouts": (
        "My wifi keeps dropping every few minutes",
        "The router disconnects <several|many> times a day, lights blinking on the router",
        "internet connection drops constantly since {day}, I have restarted the router {n} times",
        "Broadband keeps disconnecting in the evenings, the wifi light goes orange",
        "Wifi keeps dropping out on all devices, router reboot doesn't help",
    ),
    "technical_slow_speed": (
        "Slow speeds since {day}, the speed test shows {speed} mbps",
        "I'm paying for {plan_speed} mbps but only get {speed} mbps on a speed test",
        "internet is <really|very|super> slow, pages take ages to load",
        "Speeds are terrible in the evening, {speed} mbps on a {plan_speed} mbps plan",
        "why is my broadband so slow? speed test <results|result> attached",
    ),
    "technical_setup_error": (
        "Setup of {product} fails at step {n} with error code {err}",
        "Activation error {err} when I try to activate the new service",
        "the installation is stuck at {n}0% and then shows error code {err}",
        "Can't finish setup, it keeps failing with an activation error",
        "installation stuck, error code {err} every time",
    ),
    "technical_tv_streaming": (
        "The TV box keeps buffering, shows freeze every few minutes",
        "No picture on the TV box since {day}, just a black screen",
        "Half my channels are missing from the TV box after the restart",
        "Streaming on the tv box is buffering constantly, internet is fine otherwise",
        "tv box says no signal, channels missing and no picture",
    ),
    "technical_app_update_login": (
        "Since the app update I can't log in, the login screen crashes",
        "new version of the app ({version}) crashes as soon as I enter my password",
        "App crashes on the login screen since the update, reinstalled the app twice",
        "after updating the app to {version} it won't let me sign in, login screen crashes",
        "the latest app update broke login, it just closes when I tap sign in",
        "Reinstalled the app and still the login screen crashes since the update",
    ),
    "network_home_outage": (
        "No signal at home since {day}. Neighbours have the same problem",
        "Outage in my area? Nothing works, not even texts.",
        "there is no service at home at all, is there an outage in my area?",
        "Complete outage since {day}, no signal at home, the neighbours have the same problem",
        "nothing works at my address, no signal for {n} days now",
    ),
    "network_dropped_calls": (
        "Dropped calls all the time downtown, this is unacceptable",
        "My calls cut out after a minute or two, every single call",
        "Calls keep dropping mid conversation, <I can't work like this|very frustrating>",
        "call drops {n} times a day, and I cannot hear the other person half the time",
        "dropped calls in the office and at home, full bars but calls cut out",
    ),
    "network_roaming": (
        "Roaming is not working in {country}, no data while travelling",
        "I'm abroad in {country} and my phone has no service, roaming is switched on",
        "Got roaming charges of ${amount} from my trip to {country}, I thought it was included",
        "no data while travelling abroad, roaming enabled but nothing",
        "Roaming does not connect in {country}, can you check my account?",
    ),
    "account_change_details": (
        "Please update my address, I moved house last month.",
        "I want to change the email on my account",
        "how do I update my address? moved house on {day}",
        "Need to change my contact details, new phone number and new address",
        "Please change the email on my account and update my billing address",
    ),
    "account_password_reset": (
        "Password reset link never arrives",
        "I'm locked out of my account and the reset link doesn't come through",
        "The verification code never arrives so I can't reset my password",
        "password reset email not received after {n} attempts",
        "Locked out of my account, the password reset link has expired every time",
    ),
    "account_authorised_user": (
        "How do I add my partner as an authorised user?",
        "I'd like to add my partner to the account as a second account holder",
        "please give my <son|daughter|husband|wife> permission to manage the account",
        "Add an authorised user to my account so they can call on my behalf",
        "can my partner be an authorised user on the account?",
    ),
    "device_screen_damage": (
        "My phone screen cracked; is it covered by {product}?",
        "I dropped my phone and the screen cracked, how do I make an insurance claim?",
        "screen cracked on my {device}, is it covered by the insurance?",
        "Dropped my {device} yesterday, display smashed. Insurance claim please",
        "Cracked screen, want to start an insurance claim for the {device}",
    ),
    "device_faulty_replacement": (
        "The replacement device you sent is faulty",
        "Replacement {device} does not turn on, this is the second faulty one",
        "the replacement phone is faulty, it restarts by itself. I already sent back the first",
        "Got a faulty replacement device, it does not turn on at all",
        "Second replacement {device} is faulty too, sent back twice now",
    ),
    "device_battery_drain": (
        "Battery drains in a few hours since I got it",
        "My {device} battery dies by lunchtime, and it's overheating",
        "battery drains really fast, a full charge lasts {n} hours",
        "Phone overheating and battery dies quickly, it's only {n} months old",
        "the battery on my new {device} drains overnight",
    ),
    "cancel_competitor_price": (
        "I want to cancel {product}. Competitor offers it for ${amount} less.",
        "Please cancel my contract, a competitor offers the same for ${amount} less a month",
        "cheaper elsewhere, I'm going to switch provider unless you match the price",
        "I want to cancel and switch provider, I found a deal ${amount} cheaper",
        "Cancel my plan please, the competitor offers twice the data for less",
    ),
    "cancel_moving_abroad": (
        "How do I close my account? Moving abroad.",
        "I'm relocating to {country} next month, please close my account",
        "Please close my account, I'm moving abroad and you have no coverage where I am moving",
        "moving to {country}, need to close my account and stop all payments",
        "We are relocating abroad on {day}, what do I need to do to close the account?",
    ),
    "cancel_poor_service": (
        "Thinking of leaving, the service has been terrible lately",
        "Cancel everything please. Third outage this month.",
        "I am fed up with the terrible service, I want to leave",
        "Terrible service for months, please cancel everything",
        "fed up, want to leave, nobody ever fixes anything",
    ),
}

# Second sentences specific to a topic, combined freely with its opening templates: real
# tickets about one problem share its vocabulary however their first sentence is worded.
TOPIC_DETAILS: dict[str, tuple[str, ...]] = {
    "billing_double_charge": (
        "Please refund the duplicate charge.",
        "The second payment left my account overdrawn.",
        "I only have one {product} so I should only pay once.",
        "Refund the extra ${amount} please.",
    ),
    "billing_price_rise": (
        "Nobody told me the price would go up.",
        "I never got a letter about a price increase.",
        "The bill is ${amount} higher than last month.",
        "If the price stays this high I will think about leaving.",
    ),
    "billing_missing_discount": (
        "The loyalty discount was agreed on the phone.",
        "Please apply the discount and refund the difference.",
        "The promo code was confirmed by email.",
        "I was told the discount would show on this invoice.",
    ),
    "billing_autopay_failure": (
        "Please waive the late fee, it was not my fault.",
        "My card details have not changed, so the payment should have gone through.",
        "I have set up autopay twice now.",
        "The bank shows no failed payment request.",
    ),
    "technical_wifi_dropouts": (
        "The router has been restarted many times.",
        "The wifi drops on every device in the house.",
        "It disconnects worst in the evening.",
        "The router light keeps blinking.",
    ),
    "technical_slow_speed": (
        "The speed test never gets close to what I pay for.",
        "Videos keep buffering because the internet is so slow.",
        "I tested with a cable to the router, still slow.",
        "Download speed is a fraction of my plan.",
    ),
    "technical_setup_error": (
        "I followed the setup guide step by step.",
        "The error code comes back every time I restart the setup.",
        "The activation page just says error.",
        "Installation fails at the same step each time.",
    ),
    "technical_tv_streaming": (
        "The tv box was restarted and it still buffers.",
        "Every channel freezes after a few minutes.",
        "The picture freezes on every channel.",
        "We cannot watch anything on the tv.",
    ),
    "technical_app_update_login": (
        "The app worked fine before the update.",
        "Everyone in my family has the same app crash since the update.",
        "I deleted and reinstalled the app, the login still crashes.",
        "Please fix the app update, I can't pay my bill without logging in.",
    ),
    "network_home_outage": (
        "No signal anywhere in the house.",
        "The whole street has no service.",
        "Is there an outage or maintenance in my area?",
        "We have had no service at home for days.",
    ),
    "network_dropped_calls": (
        "Calls drop even with full signal bars.",
        "Every call cuts out after a minute.",
        "I can't make a work call without it dropping.",
        "The call drops and I have to call back again.",
    ),
    "network_roaming": (
        "Roaming is switched on in the phone settings.",
        "I bought the travel pass for roaming.",
        "My phone shows no network abroad.",
        "I need data while travelling for work.",
    ),
    "account_change_details": (
        "My new address is on the form I sent.",
        "The old email address no longer works.",
        "Please update the billing address too.",
        "The details on the account are out of date.",
    ),
    "account_password_reset": (
        "I checked the spam folder, no reset email.",
        "The verification code text never comes.",
        "I'm still locked out after trying the reset link.",
        "The reset link says it has expired.",
    ),
    "account_authorised_user": (
        "They need permission to manage the account and talk to you.",
        "How do we set up a second account holder?",
        "My partner should be able to call about the account.",
        "What do you need to add an authorised user?",
    ),
    "device_screen_damage": (
        "The screen is cracked across the middle.",
        "I pay for device insurance every month.",
        "How long does an insurance claim for a cracked screen take?",
        "The touch screen stopped working after the crack.",
    ),
    "device_faulty_replacement": (
        "The replacement is as faulty as the original device.",
        "I want a working replacement, not another faulty one.",
        "The faulty replacement was sent back last week.",
        "The replacement device keeps restarting.",
    ),
    "device_battery_drain": (
        "The battery drains even when I don't use the phone.",
        "The phone gets hot and the battery dies.",
        "I have to charge it three times a day.",
        "Battery health already shows low.",
    ),
    "cancel_competitor_price": (
        "The competitor offers more for less.",
        "I'll cancel unless you can match the competitor's price.",
        "Please send me the cancellation terms, I'm switching provider.",
        "It's cheaper elsewhere and I want to switch.",
    ),
    "cancel_moving_abroad": (
        "I'm moving abroad for work.",
        "Please close the account from the end of the month.",
        "There is no coverage where I am moving.",
        "I need the account closed before I relocate.",
    ),
    "cancel_poor_service": (
        "The service has been terrible and I want to leave.",
        "I'm fed up with the terrible service and want to cancel.",
        "Nothing gets fixed, so I want to leave.",
        "After months of terrible service I want to cancel everything.",
    ),
}

# Sentences of no topic at all that people add to any ticket.
GENERIC_SENTENCES = (
    "I have contacted you {n} times already.",
    "Nobody has got back to me.",
    "This is really frustrating.",
    "I've been a customer for {n} years.",
    "Please sort this out today.",
    "I'm not happy.",
    "Can someone call me back?",
)

_SLOTS: dict[str, tuple[str, ...]] = {
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "yesterday", "last week"),
    "n": ("2", "3", "4", "5", "6"),
    "speed": ("3", "8", "12", "20", "35", "48"),
    "plan_speed": ("100", "300", "500", "900"),
    "country": ("Spain", "France", "Italy", "Mexico", "Canada", "Portugal", "Greece", "Japan"),
    "device": ("iPhone 14", "Galaxy S23", "Pixel 8", "Moto G", "iPhone 13", "Galaxy A54"),
    "version": ("5.2", "5.2.1", "v5.2", "5.2.0"),
}

# Short or vague texts real queues are full of: the topic is real, the text says almost nothing.
VAGUE_TEXTS = (
    "help",
    "still not sorted",
    "same problem as before",
    "please call me back",
    "see previous ticket",
    "???",
    "not working",
    "urgent!!",
    "it happened again",
    "any update on this?",
)
GREETINGS = ("Hi,", "Hello,", "Hi there.", "Hello team,", "Good morning,", "hey")
SIGN_OFFS = ("Thanks", "Thank you.", "thx", "Please fix asap", "Regards", "cheers")

# Personal data people type into tickets. `{first}`/`{last}`/`{email}`/`{phone}` are the planted values.
NAME_PHRASES = (
    "My name is {name}.",
    "This is {name}.",
    "Account holder: {name}.",
    "{name} here.",
)
NAME_SIGN_OFFS = ("Thanks, {name}", "Regards, {name}", "Kind regards, {name}", "Cheers, {name}")
EMAIL_PHRASES = (
    "My email is {email}.",
    "Please reach me at {email}",
    "email: {email}",
    "You can contact me on {email} instead.",
    "({email})",
)
PHONE_PHRASES = (
    "Call me on {phone}.",
    "my number is {phone}",
    "Please text me at {phone}",
    "tel {phone}",
    "Ring me on {phone} after 5pm.",
)
MADE_UP_FIRST = ("Priya", "Tom", "Aisha", "Liam", "Chloe", "Marek", "Sofia", "Dylan", "Nadia", "Owen")
MADE_UP_LAST = ("Okafor", "Brennan", "Kowalski", "Haddad", "Lindqvist", "Moreau", "Tanaka", "Fitzgerald")
MAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.co.uk", "icloud.com", "btinternet.com")

# Streams of their own, so ticket text never moves any other draw of the world: the chunk's
# generator keeps exactly the calls it made before the text had topics.
_TEXT_STREAM = 0x7E47
_OUTBREAK_STREAM = 0x0B7E
VAGUE_SHARE = 0.03
PII_SHARE = 0.07
TYPO_SHARE = 0.12
_PRODUCT_NAMES = tuple(q[1] for q in ref.PRODUCTS)
_ALTERNATIVES = re.compile(r"<([^<>]*)>")
_SLOT = re.compile(r"\{(\w+)\}")

TRUTH_COLUMNS = [
    "ticket_id",
    "person_id",
    "topic",
    "label",
    "category",
    "outbreak",
    "vague",
    "pii_owner",
    "pii_name",
    "pii_email",
    "pii_phone",
]


def topics_of_category(category: str) -> list[TicketTopic]:
    """The topics of one category that appear in the normal mix (weight > 0)."""
    return [t for t in _TOPICS if t.category == category and t.weight > 0]


@dataclass
class TicketTexts:
    """Ticket descriptions and, row for row, their truth (without ticket ids)."""

    text: np.ndarray
    truth: pd.DataFrame


def text_rng(cfg: WorldConfig, chunk: int, stream: int = _TEXT_STREAM) -> np.random.Generator:
    """The separate generator ticket text draws from: seeded from (seed, chunk, stream)."""
    return np.random.default_rng([cfg.seed, chunk, stream])


def draw_topics(rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
    """A planted topic for each ticket, inside its category, by the topics' weights."""
    topic = np.empty(category.size, dtype=object)
    u = rng.random(category.size)
    for c in ref.TICKET_CATEGORIES:
        sel = np.flatnonzero(category == c)
        pool = topics_of_category(c)
        w = np.cumsum([t.weight for t in pool])
        idx = np.minimum(np.searchsorted(w / w[-1], u[sel], side="right"), len(pool) - 1)
        topic[sel] = np.array([t.topic_id for t in pool], dtype=object)[idx]
    return topic


def write_ticket_texts(
    rng: np.random.Generator,
    topic: np.ndarray,
    persons: pd.DataFrame,
    who: np.ndarray,
    *,
    outbreak: bool = False,
) -> TicketTexts:
    """Render one text per ticket from its topic's templates, with variation, vague texts and personal data.

    `who` indexes `persons` (the chunk's persons); their names, emails and phone numbers are
    what most planted personal data is; the rest is made up (someone else's details).
    """
    m = topic.size
    u = rng.random((m, 8))
    py = random.Random(int(rng.integers(0, 2**62)))
    first = persons["first_name"].to_numpy()[who]
    last = persons["last_name"].to_numpy()[who]
    email = persons["email"].to_numpy()[who]
    phone = persons["phone_digits"].to_numpy()[who]
    text = np.empty(m, dtype=object)
    cols: dict[str, list[str]] = {k: [""] * m for k in ("pii_owner", "pii_name", "pii_email", "pii_phone")}
    vague = u[:, 0] < VAGUE_SHARE
    for i in range(m):
        if vague[i]:
            body = py.choice(VAGUE_TEXTS)
        else:
            body = _expand(py.choice(TOPIC_TEMPLATES[topic[i]]), py)
            r = py.random()
            if r < 0.55:
                body = f"{_sentence(body)} {_expand(py.choice(TOPIC_DETAILS[topic[i]]), py)}"
            if r > 0.75:
                body = f"{_sentence(body)} {_expand(py.choice(GENERIC_SENTENCES), py)}"
            if u[i, 1] < TYPO_SHARE:
                body = _typo(body, py)
            if u[i, 2] < 0.12:
                body = body.lower()
        if u[i, 3] < 0.2:
            body = f"{py.choice(GREETINGS)} {body}"
        pii: list[str] = []
        if u[i, 4] < PII_SHARE:
            own = u[i, 5] < 0.7
            cols["pii_owner"][i] = "customer" if own else "other"
            kinds = [
                k
                for k, r in zip(("name", "email", "phone"), u[i, 6:8].tolist() + [py.random()], strict=True)
                if r < 0.45
            ]
            if not kinds:
                kinds = [py.choice(("name", "email", "phone"))]
            f, la = (str(first[i]), str(last[i])) if own else (py.choice(MADE_UP_FIRST), py.choice(MADE_UP_LAST))
            if "email" in kinds:
                address = str(email[i]) if own and email[i] else _made_up_email(f, la, py)
                cols["pii_email"][i] = address
                pii.append(py.choice(EMAIL_PHRASES).format(email=address))
            if "phone" in kinds:
                number = _format_phone(str(phone[i]), py) if own else _made_up_phone(py)
                cols["pii_phone"][i] = number
                pii.append(py.choice(PHONE_PHRASES).format(phone=number))
            if "name" in kinds:
                name = f"{f} {la}" if py.random() < 0.7 else f
                cols["pii_name"][i] = name
                if py.random() < 0.5:
                    body = f"{py.choice(NAME_PHRASES).format(name=name)} {body}"
                else:
                    pii.append(py.choice(NAME_SIGN_OFFS).format(name=name))
        if pii:
            body = " ".join([body, *pii])
        elif u[i, 3] > 0.8:
            body = f"{body} {py.choice(SIGN_OFFS)}"
        text[i] = body
    truth = pd.DataFrame(
        {
            "person_id": persons["person_id"].to_numpy()[who],
            "topic": topic,
            "label": [TICKET_TOPICS[t].label for t in topic],
            "category": [TICKET_TOPICS[t].category for t in topic],
            "outbreak": np.full(m, outbreak),
            "vague": vague,
            **cols,
        }
    )
    return TicketTexts(text, truth)


def _sentence(text: str) -> str:
    return text if text[-1:] in ".!?" else f"{text}."


def _expand(template: str, py: random.Random) -> str:
    out = _ALTERNATIVES.sub(lambda mt: py.choice(mt.group(1).split("|")), template)
    return _SLOT.sub(lambda mt: _fill(mt.group(1), py), out)


def _fill(slot: str, py: random.Random) -> str:
    if slot == "product":
        return py.choice(_PRODUCT_NAMES)
    if slot == "amount":
        return str(py.randint(5, 59))
    if slot == "err":
        return f"E{py.randint(100, 999)}"
    return py.choice(_SLOTS[slot])


def _typo(body: str, py: random.Random) -> str:
    """One slip of the keyboard in a longer word: a swap, a dropped or a doubled letter."""
    words = body.split(" ")
    long = [k for k, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not long:
        return body
    k = py.choice(long)
    w = words[k]
    j = py.randint(1, len(w) - 2)
    kind = py.random()
    if kind < 0.4:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind < 0.7:
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[k] = w
    return " ".join(words)


def _made_up_email(first: str, last: str, py: random.Random) -> str:
    f = re.sub(r"[^a-z]", "", first.lower()) or "user"
    la = re.sub(r"[^a-z]", "", last.lower()) or "mail"
    style = py.random()
    local = f"{f}.{la}" if style < 0.4 else f"{f[0]}{la}{py.randint(1, 99)}" if style < 0.7 else f"{f}_{la}"
    return f"{local}@{py.choice(MAIL_DOMAINS)}"


def _format_phone(digits: str, py: random.Random) -> str:
    """A customer's own number the way people write it: with or without spaces, dashes, brackets, +1."""
    if len(digits) != 10:
        return digits
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return py.choice((f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a} {b} {c}", f"+1 {a} {b} {c}", digits, f"{a}.{b}.{c}"))


def _made_up_phone(py: random.Random) -> str:
    """Someone else's number, UK style (Ofcom's drama ranges), with the spacing people use."""
    tail = f"{py.randint(0, 999):03d}"
    return py.choice(
        (
            f"07700 900{tail}",
            f"07700900{tail}",
            f"+44 7700 900{tail}",
            f"+44 (0)7700 900 {tail}",
            f"07700-900-{tail}",
            f"020 7946 0{tail}",
        )
    )


@dataclass
class OutbreakTickets:
    """Extra tickets of a planted outbreak in one chunk: who, when, and the generator that drew them."""

    who: np.ndarray
    time: np.ndarray
    rng: np.random.Generator


def outbreak_tickets(cfg: WorldConfig, chunk: int, persons: pd.DataFrame, base_times: np.ndarray) -> OutbreakTickets:
    """Draw the outbreak's extra tickets for one chunk, from its own generator.

    From `outbreak_start` for `outbreak_days`, each day gets Poisson(strength x the chunk's normal
    daily ticket volume) extra tickets, from customers active that day.
    """
    rng = text_rng(cfg, chunk, _OUTBREAK_STREAM)
    empty = OutbreakTickets(np.empty(0, dtype=np.int64), np.empty(0, dtype="datetime64[s]"), rng)
    if cfg.outbreak_topic is None or cfg.outbreak_start is None or len(persons) == 0:
        return empty
    start = np.datetime64(cfg.outbreak_start, "D")
    end = min(start + np.timedelta64(cfg.outbreak_days, "D"), np.datetime64(cfg.window_end, "D"))
    days = np.arange(start, end, np.timedelta64(1, "D"))
    window_days = max((np.datetime64(cfg.window_end, "D") - np.datetime64(cfg.window_start, "D")).astype(int), 1)
    daily = cfg.outbreak_strength * base_times.size / window_days
    counts = rng.poisson(daily, days.size)
    churn = persons["churn_date"].to_numpy().astype("datetime64[s]")
    seen = persons["observed_from"].to_numpy().astype("datetime64[s]")
    whos, times = [], []
    for day, k in zip(days.astype("datetime64[s]"), counts.tolist(), strict=True):
        if k == 0:
            continue
        active = np.flatnonzero((seen <= day) & (np.isnat(churn) | (churn > day)))
        if active.size == 0:
            continue
        whos.append(rng.choice(active, k))
        times.append(day + rng.integers(7 * 3600, 23 * 3600, k) * np.timedelta64(1, "s"))
    if not whos:
        return empty
    who, time = np.concatenate(whos), np.concatenate(times)
    order = np.argsort(time, kind="stable")
    return OutbreakTickets(who[order], time[order], rng)


def outbreak_window(cfg: WorldConfig) -> tuple[dt.date, dt.date] | None:
    """First day and the day after the last day of the planted outbreak, if there is one."""
    if cfg.outbreak_topic is None or cfg.outbreak_start is None:
        return None
    return cfg.outbreak_start, cfg.outbreak_start + dt.timedelta(days=cfg.outbreak_days)
