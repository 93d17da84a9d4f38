"""The offline commands' inputs: JSON Lines data files, classifier artifacts and optional
packages, read so that every problem is one line naming the file (and line). I/O."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from router.routing.classify import DifficultyClassifier


class InputError(Exception):
    """An input an offline command cannot use. `str()` is one line for the terminal."""


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file.

    Lines end at "\\n" only (the file is read as bytes): U+2028, U+0085 and the other Unicode
    line separators are valid inside a JSON string and must not split a row."""
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                message = f"{path}:{number}: not valid JSON: {exc.msg} (column {exc.colno})"
                raise InputError(message) from None
            except UnicodeDecodeError:
                raise InputError(f"{path}:{number}: not UTF-8 text") from None
            if not isinstance(obj, dict):
                kind = type(obj).__name__
                raise InputError(f"{path}:{number}: expected a JSON object, got a {kind}")
            yield number, obj


def row_error(where: str, exc: Exception) -> InputError:
    """A row that parsed as JSON but lacks what the command needs, as one line."""
    if isinstance(exc, KeyError):
        return InputError(f"{where}: missing field {exc.args[0]!r}")
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "row"
        return InputError(f"{where}: {field}: {first['msg']}")
    first_line = str(exc).strip().split("\n", 1)[0]
    return InputError(f"{where}: {first_line or type(exc).__name__}")


def require_directory(output: Path) -> None:
    """Fail before any work when an output file's directory does not exist."""
    if not output.parent.is_dir():
        raise InputError(f"{output}: no such directory {output.parent}")


def require_matplotlib() -> None:
    """Fail before any work when plotting is asked for but matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(
            "--plot needs matplotlib, which is not installed: pip install 'flashpro[plot]' "
            "(or pip install matplotlib), or leave out --plot"
        ) from None


def load_classifier_file(path: Path | None) -> DifficultyClassifier:
    """A classifier artifact (`--model`); None is the one shipped in the package."""
    from router.routing.classify import load_classifier

    try:
        return load_classifier(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the classifier: {exc.strerror}") from None
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a flashpro classifier artifact ({exc})") from None
