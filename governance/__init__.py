"""Bias audits, the promotion gate, model cards, consent, DSAR, masking and the audit log (issue 6)."""
