"""Reading a YAML configuration into a validated pydantic model, with errors that name the field.

Shared by every configuration (identity, features, training, policies): the shipped default lives in a
package, a user's copy anywhere; either way a problem names the file, the field and why.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(
    model: type[M],
    path: Path | None,
    default: tuple[str, str],
    error: type[Exception],
    what: str,
    shape: str,
) -> M:
    """Validate `path` (or the packaged `default` = (package, file name)) into `model`.

    Raises `error` naming the file for a missing file, bad YAML, a document that is not a
    mapping (`shape` says what it should hold), or each field that fails validation.
    """
    if path is None:
        package, name = default
        text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
        origin = f"the default {name}"
    else:
        if not path.is_file():
            raise error(f"{what} {path} does not exist")
        text = path.read_text(encoding="utf-8")
        origin = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{origin} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{origin} must hold a mapping with {shape}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise error(f"{origin}: {problems}") from exc
