"""Static reference data the generator draws from: places, products, ticket texts."""

from __future__ import annotations

import pandas as pd

# city, state, region, zip prefix (3 digits), area code, weight (rough population share)
CITIES: list[tuple[str, str, str, str, str, float]] = [
    ("New York", "NY", "Northeast", "100", "212", 8.3),
    ("Buffalo", "NY", "Northeast", "142", "716", 0.6),
    ("Boston", "MA", "Northeast", "021", "617", 1.5),
    ("Worcester", "MA", "Northeast", "016", "508", 0.4),
    ("Philadelphia", "PA", "Northeast", "191", "215", 2.6),
    ("Pittsburgh", "PA", "Northeast", "152", "412", 0.9),
    ("Newark", "NJ", "Northeast", "071", "973", 0.6),
    ("Hartford", "CT", "Northeast", "061", "860", 0.4),
    ("Providence", "RI", "Northeast", "029", "401", 0.4),
    ("Chicago", "IL", "Midwest", "606", "312", 4.5),
    ("Detroit", "MI", "Midwest", "482", "313", 1.3),
    ("Columbus", "OH", "Midwest", "432", "614", 1.4),
    ("Cleveland", "OH", "Midwest", "441", "216", 0.8),
    ("Indianapolis", "IN", "Midwest", "462", "317", 1.4),
    ("Milwaukee", "WI", "Midwest", "532", "414", 0.9),
    ("Minneapolis", "MN", "Midwest", "554", "612", 1.0),
    ("Kansas City", "MO", "Midwest", "641", "816", 0.9),
    ("St. Louis", "MO", "Midwest", "631", "314", 0.8),
    ("Omaha", "NE", "Midwest", "681", "402", 0.7),
    ("Houston", "TX", "South", "770", "713", 3.6),
    ("Dallas", "TX", "South", "752", "214", 2.0),
    ("San Antonio", "TX", "South", "782", "210", 2.3),
    ("Austin", "TX", "South", "787", "512", 1.6),
    ("Atlanta", "GA", "South", "303", "404", 1.5),
    ("Miami", "FL", "South", "331", "305", 1.4),
    ("Orlando", "FL", "South", "328", "407", 1.0),
    ("Tampa", "FL", "South", "336", "813", 1.0),
    ("Charlotte", "NC", "South", "282", "704", 1.4),
    ("Nashville", "TN", "South", "372", "615", 1.1),
    ("Louisville", "KY", "South", "402", "502", 0.8),
    ("Baltimore", "MD", "South", "212", "410", 0.9),
    ("Richmond", "VA", "South", "232", "804", 0.6),
    ("New Orleans", "LA", "South", "701", "504", 0.6),
    ("Los Angeles", "CA", "West", "900", "213", 6.0),
    ("San Diego", "CA", "West", "921", "619", 2.2),
    ("San Francisco", "CA", "West", "941", "415", 1.4),
    ("San Jose", "CA", "West", "951", "408", 1.6),
    ("Sacramento", "CA", "West", "958", "916", 0.8),
    ("Seattle", "WA", "West", "981", "206", 1.3),
    ("Portland", "OR", "West", "972", "503", 1.0),
    ("Denver", "CO", "West", "802", "303", 1.2),
    ("Phoenix", "AZ", "West", "850", "602", 2.6),
    ("Las Vegas", "NV", "West", "891", "702", 1.0),
    ("Salt Lake City", "UT", "West", "841", "801", 0.7),
    ("Albuquerque", "NM", "West", "871", "505", 0.9),
]

NICKNAMES: dict[str, str] = {
    "Robert": "Bob",
    "William": "Bill",
    "Richard": "Rick",
    "James": "Jim",
    "John": "Jack",
    "Michael": "Mike",
    "Joseph": "Joe",
    "Thomas": "Tom",
    "Christopher": "Chris",
    "Daniel": "Dan",
    "Matthew": "Matt",
    "Anthony": "Tony",
    "Steven": "Steve",
    "Andrew": "Andy",
    "Joshua": "Josh",
    "Kenneth": "Ken",
    "Edward": "Ed",
    "Timothy": "Tim",
    "Jonathan": "Jon",
    "Nicholas": "Nick",
    "Benjamin": "Ben",
    "Samuel": "Sam",
    "Alexander": "Alex",
    "Patrick": "Pat",
    "Jennifer": "Jen",
    "Elizabeth": "Liz",
    "Patricia": "Pat",
    "Margaret": "Maggie",
    "Katherine": "Kate",
    "Catherine": "Cathy",
    "Deborah": "Debbie",
    "Jessica": "Jess",
    "Rebecca": "Becky",
    "Samantha": "Sam",
    "Christina": "Tina",
    "Victoria": "Vicky",
    "Susan": "Sue",
    "Barbara": "Barb",
    "Kimberly": "Kim",
    "Stephanie": "Steph",
    "Melissa": "Mel",
    "Abigail": "Abby",
    "Alexandra": "Alex",
    "Amanda": "Mandy",
    "Pamela": "Pam",
    "Cynthia": "Cindy",
}

EMAIL_DOMAINS: list[tuple[str, float]] = [
    ("gmail.com", 0.42),
    ("yahoo.com", 0.14),
    ("outlook.com", 0.10),
    ("hotmail.com", 0.09),
    ("icloud.com", 0.09),
    ("aol.com", 0.04),
    ("comcast.net", 0.04),
    ("proton.me", 0.03),
    ("att.net", 0.03),
    ("verizon.net", 0.02),
]

SEGMENTS = ["consumer", "small_business", "premium"]
SEGMENT_WEIGHTS = [0.75, 0.15, 0.10]
CHANNELS = ["online", "retail_store", "telesales", "partner", "referral"]
CHANNEL_WEIGHTS = [0.35, 0.25, 0.15, 0.15, 0.10]
GENDERS = ["F", "M", "X"]
GENDER_WEIGHTS = [0.49, 0.48, 0.03]

# The acquired company's codes for the same concepts.
NORTHWIND_SEGMENT = {"consumer": "RES", "small_business": "SMB", "premium": "VIP"}
NORTHWIND_SEX = {"F": "F", "M": "M", "X": "U"}

# product_id, name, category, monthly price, is_plan, recurring, launched, eligible segments
PRODUCTS: list[tuple[str, str, str, float, bool, bool, str, str]] = [
    ("PLN-BASIC", "Basic plan", "plan", 25.0, True, True, "2015-01-01", "consumer|small_business"),
    ("PLN-STD", "Standard plan", "plan", 45.0, True, True, "2015-01-01", "consumer|small_business|premium"),
    ("PLN-PLUS", "Plus plan", "plan", 65.0, True, True, "2015-01-01", "consumer|small_business|premium"),
    ("PLN-PREM", "Premium plan", "plan", 95.0, True, True, "2015-01-01", "premium|small_business"),
    ("ADD-STREAM", "Streaming bundle", "entertainment", 12.0, False, True, "2018-03-01", "consumer|premium"),
    ("ADD-MUSIC", "Music pass", "entertainment", 8.0, False, True, "2019-06-01", "consumer|premium"),
    ("ADD-CLOUD", "Cloud backup 200 GB", "cloud", 5.0, False, True, "2017-01-01", "consumer|small_business|premium"),
    (
        "ADD-PROTECT",
        "Device protection",
        "insurance",
        9.0,
        False,
        True,
        "2016-01-01",
        "consumer|small_business|premium",
    ),
    ("ADD-SECURE", "Security suite", "security", 6.0, False, True, "2020-02-01", "consumer|small_business|premium"),
    (
        "ADD-INTL",
        "International calling",
        "calling",
        10.0,
        False,
        True,
        "2015-01-01",
        "consumer|small_business|premium",
    ),
    ("ADD-FAMILY", "Family line", "lines", 20.0, False, True, "2016-05-01", "consumer|premium"),
    ("ADD-TABLET", "Tablet data plan", "lines", 15.0, False, True, "2018-09-01", "consumer|small_business|premium"),
    ("ADD-SUPPORT", "Priority support", "service", 15.0, False, True, "2019-01-01", "small_business|premium"),
    ("ADD-HOME", "Smart home hub", "devices", 7.0, False, True, "2025-01-15", "consumer|premium"),
    ("BST-DATA", "Data booster 10 GB", "boosters", 10.0, False, False, "2015-01-01", "consumer|small_business|premium"),
    ("BST-ROAM", "Roaming day pass", "boosters", 12.0, False, False, "2015-01-01", "consumer|small_business|premium"),
]
PLAN_IDS = [p[0] for p in PRODUCTS if p[4]]
ADDON_IDS = [p[0] for p in PRODUCTS if not p[4]]

TICKET_CHANNELS = ["phone", "email", "chat", "social", "store"]
TICKET_CHANNEL_WEIGHTS = [0.38, 0.18, 0.30, 0.06, 0.08]
TICKET_CATEGORIES = ["billing", "technical", "network", "account", "device", "cancellation"]
TICKET_RESOLUTIONS = ["resolved", "escalated", "unresolved", "refund_issued", "customer_abandoned"]

TICKET_TEXTS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for {product} this month, please refund.",
        "My bill went up by ${amount} without any notice. Why?",
        "The discount I was promised is not on my invoice",
        "can someone explain the extra charge of ${amount}??",
        "Autopay failed again; I don't want a late fee.",
    ],
    "technical": [
        "{product} keeps disconnecting every few minutes",
        'Cannot log in to the app, it says "session expired" over and over',
        "Setup of {product} fails at step 3 with error E{amount}",
        "Slow speeds since the last update, tried restarting twice.",
    ],
    "network": [
        "No signal at home since Monday. Neighbours have the same problem",
        "Dropped calls all the time downtown, this is unacceptable",
        "Outage in my area? Nothing works, not even texts.",
    ],
    "account": [
        "Please update my address, I moved last month.",
        "I want to change the email on my account",
        "How do I add my partner as an authorised user?",
        "Password reset link never arrives",
    ],
    "device": [
        "My phone screen cracked; is it covered by {product}?",
        "The replacement device you sent is faulty",
        "Battery drains in a few hours since I got it",
    ],
    "cancellation": [
        "I want to cancel {product}. Competitor offers it for ${amount} less.",
        "How do I close my account? Moving abroad.",
        "Thinking of leaving, the service has been terrible lately",
        "Cancel everything please. Third outage this month.",
    ],
}

NPS_COMMENTS_LOW = [
    "Too expensive for what you get",
    "Support never solves anything",
    "Constant outages",
    "Hidden fees on every bill",
    "App is broken half the time",
]
NPS_COMMENTS_HIGH = [
    "Great service, no complaints",
    "Support sorted my problem fast",
    "Good value",
    "Reliable network",
    "Love the app",
]

KEY_PAGES = ["pricing", "cancellation", "upgrade", "plan_compare", "support"]
SELF_SERVICE_TASKS = ["change_plan", "pay_bill", "reset_password", "update_details", "cancel_addon"]
MICRO_CONVERSIONS = ["app_install", "newsletter_signup", "wishlist_add", "trial_start", "referral_sent"]
DEVICES = ["mobile_app", "mobile_web", "desktop"]
CONSENT_PURPOSES = ["marketing", "profiling", "analytics"]


def product_catalogue() -> pd.DataFrame:
    """The product catalogue as the catalogue system exports it."""
    return pd.DataFrame(
        PRODUCTS,
        columns=[
            "product_id",
            "name",
            "category",
            "monthly_price",
            "is_plan",
            "is_recurring",
            "launched_at",
            "eligible_segments",
        ],
    )
