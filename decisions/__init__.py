"""Next-best-action decisions: versioned policies, eligibility, arbitration under constraints, evaluation."""
