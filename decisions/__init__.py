"""Next-best-action decisions: policies, eligibility, arbitration under constraints, off-policy evaluation."""
