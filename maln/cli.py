"""The one command-line parser of this repository's commands: `--name=value` options over typed
defaults (parse_options), and for train_MALN.py the settings files of plain assignments named
before them (config/*.py, or --preset=NAME for config/NAME.py; read_settings_file). A value is
converted to its default's type; a wrong name or value stops with one line that says so."""

import ast
import os

MAX_SETTINGS_FILE_BYTES = 2 ** 16   # a settings file is a few dozen assignments


def convert(name, value, default):
    """`value` (a string) as the type of `default`: bool from true/false/1/0, int, float, or str."""
    kind = type(default)
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return kind(value)
    except ValueError:
        expected = {bool: "True or False", int: "a whole number", float: "a number"}.get(kind, f"a {kind.__name__}")
        raise SystemExit(f"--{name}={value}: must be {expected}") from None


def parse_options(argv, defaults, usage="", files=False):
    """-> (options, given): `defaults` with each `--name=value` of argv over it, converted to the default's
    type, and the names given. With files=True a bare argument is a settings file, returned in `given`
    order as options['__files__'] (the caller reads them: read_settings_file)."""
    options, given, paths = dict(defaults), [], []
    for argument in argv:
        if files and not argument.startswith("--"):
            paths.append(argument)
            continue
        name, equals, value = argument[2:].partition("=")
        if not argument.startswith("--") or not equals:
            raise SystemExit(f"arguments are --name=value{' or a settings file' if files else ''}, got {argument!r}"
                             + (f"; usage: {usage}" if usage else ""))
        if name not in defaults:
            raise SystemExit(f"unknown option {name!r}; valid names:\n  " + "\n  ".join(sorted(defaults))
                             + (f"\nusage: {usage}" if usage else ""))
        options[name] = convert(name, value, defaults[name])
        given.append(name)
    if files:
        options["__files__"] = paths
    return options, given


def read_settings_file(path, defaults):
    """The assignments of a settings file (config/*.py): `name = value` lines of known settings whose
    values are literals of their default's type (an int where a float is expected is fine). Read, never
    run: anything else in it is refused with its line number."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such settings file" + (" (is a directory)" if os.path.isdir(path) else ""))
    if os.path.getsize(path) > MAX_SETTINGS_FILE_BYTES:
        raise SystemExit(f"{path}: larger than the {MAX_SETTINGS_FILE_BYTES} bytes a settings file may have")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError) as error:
        raise SystemExit(f"{path}: not a settings file of plain assignments ({error})") from None
    values = {}
    for statement in tree.body:
        line = f"{path} line {statement.lineno}"
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise SystemExit(f"{line}: only plain assignments `name = value` may stand in a settings file")
        name = statement.targets[0].id
        if name not in defaults:
            raise SystemExit(f"{line}: unknown setting {name!r}")
        try:
            value = ast.literal_eval(statement.value)
        except ValueError:
            raise SystemExit(f"{line}: {name} must be a literal (a number, string, True or False)") from None
        kind = type(defaults[name])
        if not (type(value) is kind or (kind is float and type(value) is int)):
            raise SystemExit(f"{line}: {name} = {value!r} is not a {kind.__name__} (the top of train_MALN.py has "
                             f"{name} = {defaults[name]!r})")
        values[name] = kind(value)
    return values
