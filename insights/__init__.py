"""Insights for operations: KPIs, ticket topics, knowledge-base suggestions, segments, source anomalies."""
