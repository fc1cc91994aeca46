"""Packaged example experiment specs (YAML): `custintel experiment register` takes them as they are."""
