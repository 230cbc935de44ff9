"""Users' own models: code a study imports, and installed packages' entry points, that register presets.

A study file names the code that registers its models (``imports: [models.py]``): a file, relative
to the study file, or an importable module name. :func:`import_code` imports one of them and returns
its :class:`CodeFile`, the source text that was run and its SHA-256: the study's identity includes
it (editing the model starts a new study) and each run logs it as the artifact ``code/<name>``, so
``ablate evaluate`` and ``ablate predict`` import the same code in a fresh process
(:func:`import_file` of the logged copy).

An installed package registers models through an entry point of the group ``ablate.models``
(as pytest finds ``pytest11`` plugins); :func:`load_entry_points` imports them, once per process,
the first time the registry is asked for a model.

Whatever goes wrong in a user's code is a :class:`PluginError` of one line naming the file and the
line (a syntax error, an exception while importing it, two files registering one name), never a
traceback. A file's text is executed as it was hashed, so what is logged is what ran. Importing
text that was imported before (the same SHA-256) runs nothing: its models are registered already.

This module imports nothing of ``core.models.registry``; the registry calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "CodeFile", "PluginError", "import_code", "import_file", "load_entry_points"]

ENTRY_POINT_GROUP = "ablate.models"


class PluginError(ConfigError):
    """A user's model code cannot be imported or registers something it may not; one line, naming the file."""


@dataclass(frozen=True)
class CodeFile:
    """Source code that registers models: what ran, and under which name it is logged.

    Attributes:
        name: the artifact's name under ``code/`` (``models.py``; a module ``pkg.models``:
            ``pkg.models.py``).
        spec: how it was named: the ``imports:`` entry, or ``entry point NAME`` for a package's.
        path: the file it was read from.
        text: its contents, as executed.
        sha256: the SHA-256 of ``text`` (UTF-8), hex.
    """

    name: str
    spec: str
    path: Path
    text: str
    sha256: str


_LOADED: dict[str, CodeFile] = {}  # sha256 -> the code file first imported with that text
_BY_FILE: dict[str, CodeFile] = {}  # resolved path of a loaded file or module -> its code file
_MODULES: list[str] = []  # the modules import_file made
_ENTRY_POINTS: list[CodeFile] | None = None
_ENTRY_POINT_ERROR: PluginError | None = None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    msg = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def where(exc: BaseException, files: list[str]) -> str | None:
    """``file:line`` of the deepest frame of ``exc``'s traceback in one of ``files``, or ``None``."""
    names = {str(f) for f in files}
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename in names:
            found = f"{frame.filename}:{frame.lineno}"
    return found


def code_of(path: str | Path) -> CodeFile | None:
    """The :class:`CodeFile` imported from ``path`` (a file or a module's file), or ``None``."""
    return _BY_FILE.get(str(Path(path).resolve()))


def _read(path: Path, shown: str) -> str:
    if not path.is_file():
        raise PluginError(f"{shown}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PluginError(f"{shown}: not a Python source file (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise PluginError(f"{shown}: cannot read it: {exc.strerror or exc}") from None


def import_file(path: str | Path, name: str | None = None, spec: str | None = None) -> CodeFile:
    """Run a Python file as a module of its own, so that the models it registers exist; return its code.

    The text read is the text run (compiled from memory), and a text imported before in this process
    (same SHA-256) is not run again. The file's folder is on ``sys.path`` while it runs, so it may
    import modules beside it (those are not logged: name every file a model needs in ``imports``).

    Args:
        path: the ``.py`` file.
        name: the name it is logged under (default: the file's name).
        spec: how the study named it (default: ``path``).

    Returns:
        Its :class:`CodeFile`.

    Raises:
        PluginError: the file is missing, unreadable, has a syntax error, or raises while it runs
            (e.g. an import it needs is missing, or it registers a name that is taken): one line with
            the file and line.
    """
    shown = str(path)
    path = Path(path).expanduser()
    text = _read(path, shown)
    sha = _sha(text)
    code = CodeFile(name or path.name, spec or shown, path, text, sha)
    if sha in _LOADED:
        _BY_FILE.setdefault(str(path.resolve()), code)
        return code
    real = str(path.resolve())
    try:
        compiled = compile(text, real, "exec")
    except SyntaxError as exc:
        raise PluginError(f"{shown}:{exc.lineno}: SyntaxError: {exc.msg}") from None
    stem = re.sub(r"\W", "_", path.stem)
    module = types.ModuleType(f"_ablate_plugin_{stem}_{sha[:12]}")
    module.__file__ = real
    sys.modules[module.__name__] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        exec(compiled, module.__dict__)  # noqa: S102 - the user's own model code, named by their study file
    except Exception as exc:
        del sys.modules[module.__name__]
        line = where(exc, [real])
        at = f"{shown}:{line.rsplit(':', 1)[1]}" if line else shown
        said = str(exc) if isinstance(exc, PluginError) else _first_line(exc)  # a registration refused: its words
        raise PluginError(f"{at}: {said}") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
    _LOADED[sha] = code
    _BY_FILE[real] = code
    _MODULES.append(module.__name__)
    return code


def import_module(spec: str) -> CodeFile:
    """Import an importable module (``pkg.models``) that registers models; return its file's code.

    Raises:
        PluginError: no such module, or it fails to import (the file and line of the error).
    """
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise PluginError(f"{spec}: no module of that name (a file? give its path, ending in .py)") from None
        raise PluginError(f"{spec}: {_at_last_frame(exc)}{_first_line(exc)}") from None
    except SyntaxError as exc:
        raise PluginError(f"{spec}: {exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}") from None
    except Exception as exc:
        raise PluginError(f"{spec}: {_at_last_frame(exc)}{_first_line(exc)}") from None
    return _module_code(module, spec, f"{spec}.py")


def _at_last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in frames if "importlib" not in f.filename] or frames
    return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


def _module_code(module: types.ModuleType, spec: str, name: str) -> CodeFile:
    try:
        file = inspect.getsourcefile(module)
    except TypeError:
        file = None
    if file is None:
        raise PluginError(f"{spec}: has no Python source file to record (a compiled or namespace module)")
    real = str(Path(file).resolve())
    if real in _BY_FILE:
        return _BY_FILE[real]
    text = _read(Path(file), file)
    code = CodeFile(name, spec, Path(file), text, _sha(text))
    _BY_FILE[real] = code
    _LOADED.setdefault(code.sha256, code)
    return code


def import_code(spec: str, base: str | Path = ".") -> CodeFile:
    """One ``imports:`` entry: a file (ends in ``.py`` or has a ``/``), relative to ``base``, or a module name.

    Raises:
        PluginError: see :func:`import_file` and :func:`import_module`.
    """
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = Path(base) / path
        return import_file(path, spec=spec)
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", spec):
        raise PluginError(f"{spec}: neither a Python file (name.py) nor a module name (pkg.models)")
    return import_module(spec)


def load_entry_points() -> list[CodeFile]:
    """Import every installed package's entry point of the group ``ablate.models``, once per process.

    An entry point names a module (``my_models = mypkg.models``), whose import registers its models,
    or a function in one (``mypkg.models:register``), which is then called with no arguments.

    Returns:
        The code file of each entry point's module.

    Raises:
        PluginError: an entry point fails to load (its name, distribution and the error's file and
            line); raised again on every later call in this process.
    """
    global _ENTRY_POINTS, _ENTRY_POINT_ERROR
    if _ENTRY_POINT_ERROR is not None:
        raise _ENTRY_POINT_ERROR
    if _ENTRY_POINTS is not None:
        return _ENTRY_POINTS
    from importlib.metadata import entry_points

    _ENTRY_POINTS = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        label = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}" + (
            f", distribution {dist.name} {dist.version})" if dist is not None else ")"
        )
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
            module = sys.modules[ep.module]
            _ENTRY_POINTS.append(_module_code(module, f"entry point {ep.name}", f"{ep.module}.py"))
        except PluginError as exc:
            _ENTRY_POINT_ERROR = PluginError(f"{label}: {exc}")
            raise _ENTRY_POINT_ERROR from None
        except Exception as exc:
            _ENTRY_POINT_ERROR = PluginError(f"{label}: {_at_last_frame(exc)}{_first_line(exc)}")
            raise _ENTRY_POINT_ERROR from None
    return _ENTRY_POINTS


def _forget() -> None:
    """Forget every imported plugin file and entry point (tests: each starts from the built-in presets)."""
    global _ENTRY_POINTS, _ENTRY_POINT_ERROR
    for name in _MODULES:
        sys.modules.pop(name, None)
    _MODULES.clear()
    _LOADED.clear()
    _BY_FILE.clear()
    _ENTRY_POINTS, _ENTRY_POINT_ERROR = None, None
