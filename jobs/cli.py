"""The jobs' command lines: a flag per config field, the options every run shares, name checks,
and a user mistake as one line with exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from hw4.errors import HW4Error

# --- options every job shares ------------------------------------------------------------------

def opt(default: Any, help: str) -> Any:
    """A dataclass field whose help text becomes the ``--flag``'s help."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class RunOptions:
    """The Ray side of a training run: where it lives, how it scales, how it survives faults."""

    name: str = opt("run", "run name; the same name resumes")
    storage_path: str = opt("results", "where runs, artifacts and the registry live")
    num_workers: int = opt(1, "Ray Train workers (data parallel)")
    cpus_per_worker: float | None = opt(
        None, "CPUs per worker (torch threads: that rounded, at least 1); default: the "
              "cluster's CPUs shared out")
    gpu: bool | None = opt(None, "use GPUs; default: when the cluster has them")
    seed: int = opt(0, "seed for init, data order and noise")
    keep_checkpoints: int = opt(3, "checkpoints kept (the best by the validation metric)")
    max_failures: int = opt(2, "worker-group restarts after a crash")
    quiet: bool = opt(False, "one progress line per phase instead of Ray's worker logs "
                             "(a local Ray only; errors still surface)")
    register: bool | None = opt(None, "record the checkpoint in the registry when it beats the "
                                      "entry by the same metric (default: yes, but not for "
                                      "--smoke-test)")
    promote: bool = opt(False, "replace the registry's entry even when it was ranked by another "
                               "metric (e.g. a sweep's FID by a training run's val_loss)")
    resume: bool = opt(False, "rerunning --name with a different config: continue its "
                              "checkpoints under the new settings (recorded in changes.json)")
    overwrite: bool = opt(False, "rerunning --name: delete that run and start afresh")
    inject_fault: Literal["raise", "kill"] | None = opt(None, "test: fail once")
    fault_epoch: int = opt(1, "test: the epoch at which to fail")
    smoke_test: bool = opt(False, "tiny data and model, a few steps (for tests)")

    def validate(self) -> None:
        check_run_name(self.name)
        check(self.num_workers >= 1, f"--num-workers must be >= 1, got {self.num_workers}")
        check(self.cpus_per_worker is None or self.cpus_per_worker > 0,
              "--cpus-per-worker must be > 0")
        check(self.keep_checkpoints >= 1, "--keep-checkpoints must be >= 1")
        check(self.max_failures >= 0, "--max-failures must be >= 0")
        check(not (self.resume and self.overwrite), "give --resume or --overwrite, not both")


# --- CLI --------------------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def nested(default_factory: Callable[[], Any], help: str, flags: dict[str, str]) -> Any:
    """A dataclass field holding another config (e.g. the U-Net's) whose fields named in ``flags``
    (name: help text) are flags of the job's command line, flat: ``--base-channels``, not
    ``--model.base-channels``. Its other fields are set by the job (e.g. the class count)."""
    return dataclasses.field(default_factory=default_factory, metadata={"help": help, "flags": flags})


def _nested_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "flags" in f.metadata]


def flag_names(cls: type) -> set[str]:
    """Every flag of ``cls`` as a field name: its own fields and its nested configs' flags."""
    names = {f.name for f in dataclasses.fields(cls) if "flags" not in f.metadata}
    return names.union(*(f.metadata["flags"] for f in _nested_fields(cls)))


def _flag_fields(cls: type) -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) of each flag, a nested config's flags in its place."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "flags" not in f.metadata:
            out.append((f.name, hints[f.name], f.default, f.metadata.get("help", "")))
            continue
        inner = f.default_factory()
        inner_hints = typing.get_type_hints(type(inner))
        out += [(name, inner_hints[name], getattr(inner, name), help)
                for name, help in f.metadata["flags"].items()]
    return out


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field (a nested config's flags flat in its place); help text
    from ``field(metadata={"help": ...})``."""
    for name, kind, default, help in _flag_fields(cls):
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = {"default": default, "help": help}
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in args if a is not type(None))  # X | None -> X
            args = typing.get_args(kind)
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            kw.update(choices=args, type=type(args[0]))
        elif typing.get_origin(kind) is tuple:
            kw.update(nargs="*", type=args[0])
        else:
            kw["type"] = kind
        kw["help"] += f" (default: {default})"
        parser.add_argument(flag, **kw)


def to_argv(values: dict[str, Any]) -> list[str]:
    """{"base_channels": 16, "channel_mults": (1, 2)} -> ["--base-channels", "16",
    "--channel-mults", "1", "2"]: settings kept as a dict, handed to a job's command line."""
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, *map(str, value if isinstance(value, tuple | list) else [value])]
    return argv


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def build(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from ``values``: its fields, where a nested config may come as a dict (as saved in
    JSON), as its own object, or as its flags at the top level (as the command line, a preset or
    a sweep gives them); a flag at the top level wins over the same field in the nested dict.
    Lists become tuples (JSON has no tuples)."""
    values = dict(values)
    for f in _nested_fields(cls):
        inner = values.get(f.name)
        inner = dataclasses.asdict(inner) if dataclasses.is_dataclass(inner) else dict(inner or {})
        inner.update({k: values.pop(k) for k in f.metadata["flags"] if k in values})
        values[f.name] = type(f.default_factory())(**_tuples(inner))
    return cls(**_tuples(values))


def flat(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A config as a dict (nested, as saved, or flat) in the command line's terms: a nested
    config's flags lifted to the top, its other fields left out (the job sets them)."""
    nested_fields = _nested_fields(cls)
    nested_names = {f.name for f in nested_fields}
    out = {k: v for k, v in values.items() if k not in nested_names}
    for f in nested_fields:
        inner = values.get(f.name) or {}
        out.update({k: inner[k] for k in f.metadata["flags"] if k in inner})
    return out


def config_from_args(cls: type, ns: argparse.Namespace) -> Any:
    return build(cls, {name: getattr(ns, name) for name in flag_names(cls)})


def run_cli(main: Callable[[], Any]) -> None:
    """Run ``main``; a user mistake becomes one line on stderr and exit code 2."""
    try:
        main()
    except HW4Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str, flag: str = "--name") -> None:
    """A name that becomes a folder under the storage path: one path component, non-empty, not
    ``.`` or ``..``, no separator, letters, digits, ``.``, ``_`` and ``-`` only, starting with a
    letter or digit (so no hidden or relative names), at most 100 characters. ``--name ""``
    (an unset shell variable) would otherwise be the storage folder itself, and ``--overwrite``
    would empty it."""
    check(isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None,
          f"{flag} must be one folder name: letters, digits, '.', '_' or '-', starting with a "
          f"letter or digit, at most 100 characters; got {name!r}")


def check_run_name(name: str) -> None:
    """A run's name: one folder name, or ``<sweep>-runs/<trial id>`` for a sweep's trial."""
    parts = name.split("/") if isinstance(name, str) else [name]
    check(len(parts) == 1 or (len(parts) == 2 and parts[0].endswith("-runs")),
          f"--name must be one folder name; got {name!r}")
    for part in parts:
        check_name(part)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise HW4Error(message)


def check_preset(cls: type, name: str, values: dict) -> None:
    """A preset may set only fields of ``cls``: a misspelt key is an error, not a silent no-op."""
    unknown = sorted(set(values) - flag_names(cls))
    check(not unknown, f"preset {name!r} sets {unknown}, which {cls.__name__} does not have")


def parse_config(cls: type, argv: list[str] | None, smoke: dict, doc: str,
                 presets: dict[str, dict] | None = None, preset_help: str = "") -> Any:
    """argv -> validated config. ``--smoke-test`` makes ``smoke`` the defaults; ``--preset NAME``
    (when ``presets`` are given) makes ``presets[NAME]`` the defaults. Explicit flags still win."""
    parser = ArgumentParser(description=doc.strip().splitlines()[0])
    add_config_args(parser, cls)
    if presets:
        for name, values in presets.items():
            check_preset(cls, name, values)
        parser.add_argument("--preset", choices=list(presets), default=None, help=preset_help)
    first = parser.parse_args(argv)
    defaults = dict(presets[first.preset]) if presets and first.preset else {}
    if first.smoke_test:
        defaults.update(smoke)  # smoke values replace defaults; explicit flags still win
    parser.set_defaults(**defaults)
    cfg = config_from_args(cls, parser.parse_args(argv))
    cfg.storage_path = str(Path(cfg.storage_path).resolve())
    cfg.validate()
    return cfg


def config_from_state(cls: type, state: dict) -> Any:
    """The job config saved in a checkpoint (a nested config as saved, or flat as older
    checkpoints have it; JSON-ish lists back to tuples)."""
    return build(cls, state["config"])
