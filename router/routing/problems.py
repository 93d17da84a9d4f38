"""Policy validation errors said the way a person fixes them: one problem per line, YAML paths
in one style (`rules[1].when.tools`), "did you mean" for a mistyped key, YAML syntax errors at
the file's line and column. Pure."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Sequence
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import ErrorDetails

MAX_KNOWN_SHOWN = 12


class Problems(ValueError):
    """Several independent problems found by one validator; each is reported on its own line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def yaml_path(loc: Iterable[int | str]) -> str:
    """`("rules", 1, "when", "tool")` -> `rules[1].when.tool`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def describe(errors: Iterable[ErrorDetails], root: type[BaseModel]) -> list[str]:
    """One line per problem in a pydantic validation of `root`."""
    problems: list[str] = []
    for error in errors:
        nested = (error.get("ctx") or {}).get("error")
        if isinstance(nested, Problems):
            problems.extend(nested.problems)
        else:
            problems.append(_describe(error, root))
    return problems


def _describe(error: ErrorDetails, root: type[BaseModel]) -> str:
    loc = error["loc"]
    path = yaml_path(loc)
    if error["type"] == "extra_forbidden" and loc:
        return f"{path}: unknown key{_suggestion(str(loc[-1]), known_keys(root, loc[:-1]))}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


def _suggestion(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean `{close[0]}`?"
    if not known:
        return ""
    shown = ", ".join(known[:MAX_KNOWN_SHOWN]) + (", ..." if len(known) > MAX_KNOWN_SHOWN else "")
    return f" (known keys: {shown})"


def known_keys(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys the model at `loc` (a path inside `root`) accepts; [] when it is not a model."""
    node: Any = root
    for part in loc:
        node = _child(node, part)
        if node is None:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _child(node: Any, part: int | str) -> Any:
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(str(part))
        return None if field is None else _unwrap(field.annotation)
    if get_origin(node) in (dict, list, tuple):
        args = get_args(node)
        return _unwrap(args[-1]) if args else None
    return None


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> `X` (the first model of a wider union)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else (args[0] if len(args) == 1 else None)
    return annotation


def yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """A YAML syntax error as `file:line:column: not valid YAML: what`."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    what = getattr(exc, "problem", None) or str(exc).split("\n", 1)[0]
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {what}" + (f" ({context})" if context else "")
