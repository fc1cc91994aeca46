"""Customer-experience intelligence for operations (issue 24).

KPIs, ticket topics and emerging issues, knowledge-base suggestions, behavioural segments and source
anomalies. Imports only `features` and `custintel`. Ticket text is personal data: everything insights
shows, logs or stores passes through `insights.text.mask` first.
"""
