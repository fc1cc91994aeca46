"""Reading a YAML configuration into a validated pydantic model, with errors that name the field.

Shared by every configuration (identity, features, training, policies): the shipped default lives in a
package, a user's copy anywhere; either way a problem names the file, the field and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

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


_NAMES_FIELD = re.compile(r"^[A-Za-z_][\w\[\].]*: ")


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a path: ('actions', 2, 'channels', 0) -> 'actions[2].channels[0]'.

    Validator frames (`function-...`) and a bad mapping key's marker (`[key]`: the path already ends with the key)
    are left out; an error on the document itself gives ''.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part and part != "[key]" and not part.startswith("function-"):
            path += f".{part}" if path else str(part)
    return path


def error_message(error: Mapping[str, Any], root: str) -> str:
    """One validation error as 'field.path: reason', without pydantic's 'Value error, ' prefix.

    A cross-field check that names its own field ("fallback: ...") is put below the model it checks; an error on
    the whole document is named `root`.
    """
    msg = str(error["msg"]).removeprefix("Value error, ")
    head = field_path(error["loc"])
    if _NAMES_FIELD.match(msg):
        return f"{head}.{msg}" if head else msg
    return f"{head or root}: {msg}"
