"""Sources, data contracts, ingestion, identity resolution, golden records and feature stores."""
