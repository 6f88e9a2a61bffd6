"""Backbones across runs: read the trained backbone of a run, a checkpoint or an export
(`backbone.init_from`), load it into another run's backbone, and write it out for use
outside rayssl (`rayssl export`).

Every method keeps the network it trains under `backbone` (BYOL: the online one; the
momentum copy is `backbone_momentum`), so a method's backbone is the `backbone.*` part of
its state dict. An export is one `torch.save` file of plain data: the state dict, the
factory name and kwargs that rebuild the network, the input shape and normalisation, and
where it came from; `load_exported` rebuilds it without Ray or a rayssl config.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayssl.config import ConfigError
from rayssl.errors import first_line
from rayssl.runs.state import UnsafeState, load_state_file

EXPORT_FORMAT = "rayssl-backbone/1"
PREFIX = "backbone."


@dataclass
class Pretrained:
    """A trained backbone: its weights and what rebuilds it."""

    state: dict[str, torch.Tensor]
    spec: dict[str, Any]  # {"name": factory, **kwargs}: the run's `backbone` section
    input_shape: list[int] | None
    normalize: dict[str, list[float]] | str | None  # {"mean", "std"} per channel, "sample"
    source: dict[str, Any] = field(default_factory=dict)  # run, checkpoint, method, epoch

    def describe(self) -> str:
        kwargs = ", ".join(f"{k} {v}" for k, v in sorted(self.spec.items()) if k != "name")
        return f"{self.spec['name']}" + (f" ({kwargs})" if kwargs else "")


def read(
    path: str, field_name: str = "backbone.init_from", trust_import_paths: bool = False
) -> Pretrained:
    """The backbone of `path`: a run directory (its newest registered checkpoint, so a
    running run works too), a checkpoint directory, or a file written by `rayssl export`.
    Local paths or any URI the run's storage takes. Read as data: nothing the file names
    is imported, called or loaded (see `_shape_from_data` for the one exception, which
    needs `trust_import_paths`)."""
    from rayssl.runs.state import STATE_FILE

    data = _export_bytes(path, field_name)  # a file is an export, whatever its suffix
    if data is not None:
        return _read_export(data, path, field_name)
    state, where = read_state(path, field_name, STATE_FILE, export_too=True)
    model = state["model"]
    weights = {k[len(PREFIX) :]: v for k, v in model.items() if k.startswith(PREFIX)}
    if not weights:
        raise ConfigError(f"{field_name} '{path}': its checkpoint holds no backbone weights")
    cfg = state["config"]
    spec = {k: v for k, v in cfg["backbone"].items() if k != "init_from"}
    shape = state.get("input", {}).get("shape")
    if shape is None:  # checkpoints written before the input record: ask the data
        shape = _shape_from_data(cfg, path, field_name, trust_import_paths)
    stats = state.get("input", {}).get("normalize")
    return Pretrained(
        weights,
        spec,
        shape,
        stats,
        {
            **where,
            "method": cfg["method"],
            "epoch": state["loop"]["epoch"],
        },
    )


def _shape_from_data(cfg: dict, path: str, field_name: str, trusted: bool) -> list[int]:
    """The input shape of a checkpoint written before rayssl recorded it: only its data
    can tell, and validating its config imports what it names by import path and reads
    its `data.path`, so that happens only for a caller who trusts the file."""
    if not trusted:
        fix = (
            "export it with rayssl export --trust-import-paths and give the export"
            if field_name == "backbone.init_from"
            else "pass --trust-import-paths (trust_import_paths=True)"
        )
        raise ConfigError(
            f"{field_name} '{path}': its checkpoint predates rayssl's input record, so its "
            "input shape is known only by rebuilding its config (which imports what it "
            f"names) and reading its data; if you trust the file, {fix}"
        )
    from rayssl.config import validate_train_config
    from rayssl.data import load_splits

    return list(load_splits(validate_train_config(cfg).data, cfg["seed"]).sample_shape)


def read_state(
    path: str, field_name: str, state_file: str, export_too: bool = False
) -> tuple[dict, dict[str, str]]:
    """The training state behind `path` (`runs/resolve.py`: a checkpoint folder, a run
    folder's newest checkpoint, a run's name; local or a URI) and where it was found."""
    import pyarrow.fs as pafs

    from rayssl.runs import resolve

    found = resolve.checkpoint(path, field_name, state_file, export_too)
    record = (
        {"run": found.where, "checkpoint": found.checkpoint}
        if found.checkpoint
        else {"checkpoint": found.where}
    )
    file = f"{found.shown}/{state_file}"
    try:
        fs, base = pafs.FileSystem.from_uri(file)
        with fs.open_input_file(base) as f:
            data = f.readall()
    except OSError as exc:
        raise ConfigError(f"{field_name} '{path}' cannot be read ({exc})") from None
    try:
        state = load_state_file(io.BytesIO(data))
    except UnsafeState as exc:  # damaged, or naming more than tensors: name the file
        raise ConfigError(f"{field_name} '{path}': '{file}': {exc}") from None
    except Exception as exc:  # torch raises several types for a foreign or truncated file
        raise ConfigError(
            f"{field_name} '{path}': not a rayssl checkpoint ({first_line(exc, with_type=False)})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"{field_name} '{path}': not a rayssl checkpoint")
    return state, record


def _export_bytes(path: str, field_name: str) -> bytes | None:
    """The bytes of export file `path` (a local path or a URI); None if it is no file."""
    import pyarrow.fs as pafs

    where = path if "://" in path else str(Path(path).expanduser().resolve())
    try:
        fs, base = pafs.FileSystem.from_uri(where)
        if fs.get_file_info(base).type != pafs.FileType.File:
            return None
        with fs.open_input_file(base) as f:
            return f.readall()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{field_name} '{path}' cannot be read ({exc})") from None


TORCHSCRIPT_STATE = "rayssl_state_dict.pt"  # the weights, as plain data, in a TorchScript export


def _read_export(data: bytes, path: str, field_name: str) -> Pretrained:
    """An export of either format, read as data. A TorchScript archive is a zip file; its
    metadata and a `torch.save` copy of its weights travel in its extra files, which are
    read from the zip without `torch.jit.load` (that would run the archive's code, e.g. a
    `__setstate__`). A `state_dict` export is loaded with weights_only."""
    import json

    not_export = (
        f"{field_name} '{path}': not a rayssl export (format {EXPORT_FORMAT}); give a run "
        "folder, a checkpoint folder, or a file written by rayssl export"
    )
    extras = _torchscript_extras(data)
    if extras is not None:
        if "rayssl.json" not in extras:
            raise ConfigError(not_export)
        if TORCHSCRIPT_STATE not in extras:
            raise ConfigError(
                f"{field_name} '{path}': a TorchScript export written before rayssl stored "
                "its weights as data; reading them would run the archive's code. Export "
                "the run again (rayssl export), or load it yourself with "
                "load_exported(..., torchscript=True) if you trust the file"
            )
        try:
            record = json.loads(extras["rayssl.json"])
            weights = torch.load(
                io.BytesIO(extras[TORCHSCRIPT_STATE]), map_location="cpu", weights_only=True
            )
        except Exception as exc:  # json or torch: several types for a damaged file
            raise ConfigError(f"{not_export} ({first_line(exc, with_type=False)})") from None
        if isinstance(record, dict):
            record["state_dict"] = weights
    else:
        try:
            record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a foreign or truncated file
            raise ConfigError(f"{not_export} ({first_line(exc, with_type=False)})") from None
    keys = ("state_dict", "backbone", "input_shape", "normalize", "source")
    if (
        not isinstance(record, dict)
        or record.get("format") != EXPORT_FORMAT
        or any(k not in record for k in keys)
        or not isinstance(record["state_dict"], dict)
        or not isinstance(record["backbone"], dict)
    ):
        raise ConfigError(not_export)
    return Pretrained(
        record["state_dict"],
        record["backbone"],
        record["input_shape"],
        record["normalize"],
        record["source"],
    )


def _torchscript_extras(data: bytes) -> dict[str, bytes] | None:
    """The extra files of a TorchScript archive (`<archive>/extra/<name>` in its zip), read
    without loading it; None if `data` is not a TorchScript archive."""
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if not any(n.split("/", 1)[-1] == "constants.pkl" for n in names):
        return None  # a torch.save zip (a state_dict export), not TorchScript
    extras = {}
    for name in names:
        parts = name.split("/")
        if len(parts) == 3 and parts[1] == "extra":
            extras[parts[2]] = archive.read(name)
    return extras


def load_into(backbone: nn.Module, pretrained: Pretrained, spec: dict[str, Any], path: str):
    """Copy `pretrained`'s weights into `backbone` (this run's, built from `spec`); a
    different architecture or shape is one line naming both."""
    ours = {k: v for k, v in spec.items() if k != "init_from"}
    mine = Pretrained({}, ours, None, None)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(pretrained.state))
    extra = sorted(set(pretrained.state) - set(expected))
    wrong = [
        (k, tuple(pretrained.state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in pretrained.state and pretrained.state[k].shape != v.shape
    ]
    if missing or extra or wrong:
        if wrong:
            key, theirs, mine_shape = wrong[0]
            detail = f"'{key}' is {list(theirs)} there, {list(mine_shape)} here"
        else:
            detail = f"weights {', '.join((missing or extra)[:3])} " + (
                "missing there" if missing else "not in this backbone"
            )
        raise ConfigError(
            f"backbone.init_from '{path}': its backbone {pretrained.describe()} does not fit "
            f"this run's {mine.describe()} ({detail}); use the same backbone settings"
        )
    backbone.load_state_dict(pretrained.state)


# ============================================================================ export


def refuse_import_paths(names: list[Any], where: str, trusted: bool) -> None:
    """Rebuilding a network named by import path ('package.module:function') imports and
    calls what a file names: only when the caller says it trusts the file."""
    named = [n for n in names if isinstance(n, str) and ":" in n]
    if named and not trusted:
        raise ConfigError(
            f"'{where}' names '{named[0]}' by import path; rebuilding it would import and "
            "call that: pass --trust-import-paths (trust_import_paths=True) if you trust "
            "the file"
        )


EXPORT_STAGES = ("reading the checkpoint", "converting", "writing")


def export(
    path: str,
    out: str,
    fmt: str = "state_dict",
    trust_import_paths: bool = False,
    stage: Callable[[str], None] | None = None,
) -> Pretrained:
    """Write the backbone of run / checkpoint `path` to `out` (a local path or a URI): a
    `state_dict` export (see the module docstring), TorchScript (`torch.jit.trace` on the
    input shape, with the same metadata in the archive's extra files) or ONNX (the
    normalisation inside, a dynamic batch: `runs/deploy.py`); a backbone named by import
    path is rebuilt for tracing or ONNX only with `trust_import_paths`. Written locally,
    then moved into place: a failed export leaves no partial file at `out`. `stage` is
    called as each of `EXPORT_STAGES` ends (the CLI's bar: an export is three long calls,
    not a count of items)."""
    import json
    import tempfile

    done = stage or (lambda name: None)
    pretrained = read(path, "path", trust_import_paths)
    done(EXPORT_STAGES[0])
    record = {
        "format": EXPORT_FORMAT,
        "backbone": pretrained.spec,
        "input_shape": pretrained.input_shape,
        "normalize": pretrained.normalize,
        "source": pretrained.source,
    }
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "backbone.pt"
        if fmt == "state_dict":
            torch.save({**record, "state_dict": pretrained.state}, local)
        elif fmt == "onnx":
            from rayssl.runs.deploy import write_onnx

            write_onnx(rebuild(pretrained, path, trust_import_paths), record, local, path)
        else:
            traced = _trace(pretrained, path, trust_import_paths)
            weights = io.BytesIO()
            torch.save(pretrained.state, weights)
            extra = {"rayssl.json": json.dumps(record), TORCHSCRIPT_STATE: weights.getvalue()}
            torch.jit.save(traced, str(local), _extra_files=extra)
        done(EXPORT_STAGES[1])
        _put(local, out)
        done(EXPORT_STAGES[2])
    return pretrained


def _trace(pretrained: Pretrained, path: str, trust_import_paths: bool) -> Any:
    """The backbone rebuilt from its spec, loaded, and traced on its input shape."""
    from rayssl import nets
    from rayssl.config import NetConfig

    refuse_import_paths([pretrained.spec.get("name")], path, trust_import_paths)
    try:
        spec = NetConfig(**pretrained.spec)
        module = nets.call_factory(
            spec.factory(nets.BACKBONES), spec.kwargs, input_shape=tuple(pretrained.input_shape)
        )
        module.load_state_dict(pretrained.state)
        module.eval()
        with torch.no_grad():
            return torch.jit.trace(module, torch.zeros(2, *pretrained.input_shape))
    except Exception as exc:  # pydantic, the factory or the tracer: many types
        raise ConfigError(
            f"path '{path}': its backbone {pretrained.describe()} cannot be traced to "
            f"TorchScript ({first_line(exc)}); use --format state_dict"
        ) from None


def _put(local: Path, out: str) -> None:
    """Copy `local` to `out` (a path or a URI pyarrow takes) through a temporary name."""
    import pyarrow.fs as pafs

    where = out if "://" in out else str(Path(out).expanduser().resolve())
    try:
        fs, base = pafs.FileSystem.from_uri(where)
        parent = base.rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{base.rsplit('/', 1)[-1]}.tmp"
        pafs.copy_files(str(local), tmp, destination_filesystem=fs)
        fs.move(tmp, base)
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid is a ValueError
        raise ConfigError(f"--out '{out}' cannot be written ({first_line(exc)})") from None


def load_exported(
    path: str | Path, trust_import_paths: bool = False, torchscript: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an export (either format) as an eval-mode module, with its metadata. Needs
    only torch; no Ray, no config file. The file is read as data and the network rebuilt
    from its factory; a backbone given by import path imports and calls that factory:
    refused unless `trust_import_paths`. `torchscript=True` instead loads a TorchScript
    export with `torch.jit.load`, which runs code the archive holds: only for files you
    trust."""
    import json

    path = str(path)
    if torchscript:
        extra = {"rayssl.json": ""}
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        return module.eval(), json.loads(extra["rayssl.json"] or "{}")
    data = _export_bytes(path, "path")
    if data is None:
        raise ConfigError(f"path '{path}' is not a file written by rayssl export")
    pretrained = _read_export(data, path, "path")
    module = rebuild(pretrained, path, trust_import_paths)
    meta = {"format": EXPORT_FORMAT, "backbone": pretrained.spec, "source": pretrained.source}
    meta.update(input_shape=pretrained.input_shape, normalize=pretrained.normalize)
    return module.eval(), meta


def rebuild(pretrained: Pretrained, path: str, trust_import_paths: bool = False) -> nn.Module:
    """The backbone network of `pretrained`, its weights loaded, in eval mode (a backbone
    named by import path only with `trust_import_paths`)."""
    from rayssl import nets
    from rayssl.config import NetConfig

    refuse_import_paths([pretrained.spec.get("name")], path, trust_import_paths)
    spec = NetConfig(**pretrained.spec)
    module = nets.call_factory(
        spec.factory(nets.BACKBONES), spec.kwargs, input_shape=tuple(pretrained.input_shape)
    )
    module.load_state_dict(pretrained.state)
    return module.eval()
