"""Ticket text: masking of personal data, topics, and emerging-issue alerts."""
