"""Point-in-time features: definitions, builds, the offline and the online store."""
