"""Customer-experience intelligence for operations.

KPIs, ticket topics and emerging issues, knowledge-base suggestions, behavioural
segments and source anomalies. Steps are plain functions on data frames;
flows/insights.py wires them. Ticket text is personal data: everything insights
shows, logs or stores passes through `insights.text.mask` first.
"""
