"""BentoML services, request and response schemas, auth (issue 7)."""
