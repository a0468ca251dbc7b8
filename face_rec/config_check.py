"""Type-check a composed config before any work starts: :func:`check_config`.

Hydra checks that a config composes, not that its values fit the code: ``head.loss.m=abc``
would otherwise load the data and build the model, then fail inside the loss. ``check_config``
reads the whole config once and raises one :class:`ConfigError` that lists every problem found,
one per line, each naming the key, the value and the expected type.

What is checked:

* every value, resolved: a missing mandatory value (``???``) and an interpolation that does not
  resolve are reported under their own key;
* every node with a ``_target_`` (model, head module and loss, optimizer, augment, align
  settings and detector, ...): the target is imported, and each key that is a parameter of the
  target (a class: its ``__init__``) is checked against the parameter's annotation. A key that
  is not a parameter is reported, unless the target takes ``**kwargs`` (Hydra's own keys,
  ``_target_``, ``_partial_``, ... are never reported). Every key of a ``_target_`` node reaches
  the target: the call sites add keywords (``num_classes`` for the head module, ``seed`` for
  augment) but drop none. ``**kwargs`` are followed where they go: ``create_model`` passes them
  to the backbone registered under ``name``, and a function whose only parameter is ``**kwargs``
  and that returns a class passes them to that class;
* the sections without a ``_target_`` and with fixed keys (``trainer``, ``eval``,
  ``scheduler``, ``head``, ``val``, ``data``, ``train_data`` and its sources, ``align``,
  ``paths``, and the top-level keys of train.yaml, eval_lfw.yaml and align.yaml), against the
  dataclasses below, unknown keys included (``+trainer.max_step=5`` is a typo, not a setting).

Type rules: ``float`` takes an int or a float (not a bool); ``int`` an int (not a bool);
``bool`` a bool; ``str`` a str; ``Path`` a str; ``X | None`` also None; a union any of its
members (``torch.Tensor`` members are ignored: a config never holds a tensor); ``list``,
``tuple`` and ``Sequence`` a list (elements checked against simple element types, fixed-length
tuples by length too); ``dict`` and ``Mapping`` a dict; ``Literal`` one of its values.

What is not checked: values (ranges, choices such as ``scheduler.kind`` or ``head.sampler``:
the code that uses them says which are valid), parameters the config leaves out (the call sites
supply some), ``typing.Any``, unannotated parameters and parameters annotated with any other
class; a target whose signature cannot be read is skipped, one whose annotations cannot be
resolved has its keys checked but not their types. The ``hydra`` node is not checked.

The schemas must follow the yaml files and the code that reads them: a new key in
conf/trainer/default.yaml needs a field in :class:`TrainerConfig`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_UNION_ORIGINS = (Union, types.UnionType)


class ConfigError(ValueError):
    """The config's problems, one per line (``problems`` holds them as a list)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"config error: {p}" for p in self.problems))


class _Unresolved:
    """A value that is missing or whose interpolation failed (already reported)."""

    def __repr__(self) -> str:
        return "<unresolved>"


_UNRESOLVED = _Unresolved()


# --- schemas of the sections without a _target_ (types as the yaml files and the code use them)


@dataclass
class TopLevelConfig:
    """Top-level keys of conf/train.yaml, eval_lfw.yaml, align.yaml, embed.yaml, export.yaml,
    identify.yaml."""

    paths: dict
    data: dict
    align: dict
    model: dict
    head: dict
    optimizer: dict
    scheduler: dict
    trainer: dict
    augment: dict
    train_data: dict
    val: dict
    eval: dict
    task_name: str
    run_name: str | int  # ``run_name=20240101`` parses as an int; it only names a folder
    seed: int
    resume: bool | Path
    optimized_metric: str | None
    init_from: Path | None
    partial_fc: float | None
    checkpoint: Path | None
    pairs: Path | list[Path] | None  # eval_lfw.yaml: one list, or a suite of lists
    suite: str | None  # eval_lfw.yaml: standard (the .bin sets of paths.bins_dir)
    image_root: Path | None
    calibration_pairs: Path | None
    trained_on: Path | None
    input_dir: Path
    output_dir: Path | None  # embed.yaml: null, a folder per command
    limit: int | None
    calibrate_far: float | None  # eval_lfw.yaml
    target: Literal["IJBC", "IJBB"]  # eval_ijb.yaml
    root: Path  # eval_ijb.yaml: the IJB folder (loose_crop/, meta/)
    template: dict  # eval_ijb.yaml: a _target_ node (face_rec.eval.ijb.TemplateSwitches)
    feature_cache: Path  # eval_ijb.yaml
    identification: bool  # eval_ijb.yaml
    save_scores: bool  # eval_ijb.yaml
    list: Path | None  # identify.yaml: the path,identity,role CSV
    ranks: list[int]  # identify.yaml: the rank-k accuracies reported
    max_rank: int  # identify.yaml: the CMC's last rank
    aligned: bool  # embed.yaml
    keep_freed_memory: bool  # embed.yaml: glibc keeps freed buffers on the CPU
    batch_size: int
    device: str
    flip: bool
    chunk_size: int
    model_name: str | None
    format: Literal["onnx", "torchscript"]  # export.yaml
    output: Path | None
    opset: int
    parity_pack: Path | None
    parity_images: int
    parity_atol: float
    parity_rtol: float


@dataclass
class PathsConfig:
    """conf/paths/default.yaml."""

    data_dir: Path
    pack_dir: Path
    log_dir: Path
    bins_dir: Path


@dataclass
class DataConfig:
    """conf/data/*.yaml: a dataset's images and pack (``ensure_pack``, ``align.py``)."""

    name: str
    root: Path
    image_dir: Path
    pack_dir: Path
    limit: int | None
    min_face_size: int
    fallback_face_fraction: float
    tight_dir: Path | None  # conf/data/lfw.yaml: python -m face_rec.data.tight_crop's output


@dataclass
class SourceConfig(DataConfig):
    """A training source, ``train_data.sources.<name>``: a dataset and its identity list."""

    identities: Path | None


@dataclass
class TrainDataConfig:
    """conf/train_data/*.yaml (``face_rec.train.training_data``)."""

    sources: dict
    min_images_per_identity: int
    include_fallbacks: bool
    class_weight_power: float | None
    holdout_fraction: float
    exclude_images_of: Path | None
    aligned_folder: Path | None
    rec: Path | None
    idx: Path | None


@dataclass
class AlignConfig:
    """conf/align/default.yaml (``face_rec.align.cli.alignment_kwargs``); ``settings`` and
    ``detector`` are ``_target_`` nodes, checked against their targets."""

    settings: dict
    detector: dict
    workers: int | None
    threads_per_worker: int
    chunk_size: int
    shard_size: int


@dataclass
class HeadConfig:
    """conf/head/*.yaml (``build_trainer``, ``make_plan``); ``module`` and ``loss`` are
    ``_target_`` nodes."""

    name: str
    module: dict | None
    loss: dict
    sampler: str


@dataclass
class SchedulerConfig:
    """conf/scheduler/*.yaml: keywords of ``face_rec.engine.schedule.make_scheduler`` and the
    ``lr_factor`` it passes the rest to."""

    kind: str
    warmup_steps: int
    power: float
    milestones: list[float]
    gamma: float
    final: float


@dataclass
class TrainerConfig:
    """conf/trainer/default.yaml (``build_trainer``, ``make_plan``, ``train_from_config``)."""

    max_steps: int
    batch_size: int
    images_per_identity: int
    device: str
    backend: str
    precision: str
    channels_last: bool
    compile: bool
    grad_clip: float | None
    grad_clip_scope: Literal["backbone", "all"]
    backbone_lr_scale: float
    head_lr_scale: float
    freeze_stages: int
    ema_decay: float
    accum_steps: int
    num_workers: int
    keep_freed_memory: bool
    log_every: int
    eval_every: int
    checkpoint_every: int


@dataclass
class ValConfig:
    """conf/val/*.yaml (``face_rec.train.PairValidation``): named ``sets``, the standard
    ``.bin`` sets of ``bins_dir``; ``select``: holdout, mean, a set's name or a pair list."""

    sets: dict
    bins_dir: Path | None
    select: Path | None


@dataclass
class ValSetConfig:
    """One validation set, ``val.sets.<name>`` (:func:`face_rec.eval.suite.configured_sets`;
    a plain path is accepted too)."""

    pairs: Path
    calibration_pairs: Path | None
    image_root: Path | None
    build: str | None  # the command that makes a missing ``pairs`` (conf/val/lfw_tight.yaml)


@dataclass
class EvalConfig:
    """conf/eval/default.yaml (``evaluate_from_config``, ``PairValidation``)."""

    batch_size: int
    device: str
    keep_freed_memory: bool
    flip: bool
    n_bootstrap: int
    seed: int
    cache_dir: Path


#: dotted path of a section (``*``: any one key) -> its schema
SCHEMAS: dict[str, type] = {
    "": TopLevelConfig,
    "paths": PathsConfig,
    "data": DataConfig,
    "train_data": TrainDataConfig,
    "train_data.sources.*": SourceConfig,
    "align": AlignConfig,
    "head": HeadConfig,
    "scheduler": SchedulerConfig,
    "trainer": TrainerConfig,
    "val": ValConfig,
    "val.sets.*": ValSetConfig,
    "eval": EvalConfig,
}


# --- public entry


def check_config(cfg: DictConfig) -> None:
    """Check every value of ``cfg`` against the code that will receive it.

    Raises:
        ConfigError: one line per problem (key, value, expected type, and what expects it).
    """
    problems: list[str] = []
    tree = _resolve(cfg, "", problems, skip=("hydra",))
    _walk(tree, "", problems)
    if problems:
        raise ConfigError(problems)


# --- resolution: a plain tree, each failure reported under its own key


def _resolve(node: DictConfig | ListConfig, path: str, problems: list[str], skip=()) -> Any:
    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    items = [(k, _resolve_one(node, k, _join(path, k), problems)) for k in keys if k not in skip]
    return dict(items) if isinstance(node, DictConfig) else [v for _, v in items]


def _resolve_one(node: DictConfig | ListConfig, key: Any, path: str, problems: list[str]) -> Any:
    if OmegaConf.is_missing(node, key):
        problems.append(f"{path} is missing (???): give it a value, e.g. {path}=...")
        return _UNRESOLVED
    try:
        value = node[key]
    except OmegaConfBaseException as e:
        problems.append(f"{path} cannot be resolved: {_first_line(e)}")
        return _UNRESOLVED
    if isinstance(value, (DictConfig, ListConfig)):
        return _resolve(value, path, problems)
    return value


# --- walking the tree


def _walk(value: Any, path: str, problems: list[str]) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", problems)
        return
    if not isinstance(value, dict):
        return
    if "_target_" in value:
        spec = _target_spec(value, path, problems)
    else:
        schema = _schema_for(path)
        spec = _schema_spec(schema) if schema is not None else None
    if spec is not None:
        _check_keys(value, path, spec, problems)
    for key, item in value.items():
        if key not in HYDRA_KEYS:
            _walk(item, _join(path, key), problems)


@dataclass
class _Spec:
    """What a node's keys are checked against."""

    owner: str  # e.g. face_rec.losses.CosFaceLoss
    kind: str  # "parameter" (of a target) or "key" (of a schema)
    params: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (type, owner)
    open: bool = False  # takes **kwargs: any other key is accepted


def _check_keys(node: dict, path: str, spec: _Spec, problems: list[str]) -> None:
    for key, value in node.items():
        if key in HYDRA_KEYS or value is _UNRESOLVED:
            continue
        sub = _join(path, key)
        if key not in spec.params:
            if not spec.open:
                problems.append(_unknown_key(sub, key, spec))
            continue
        hint, owner = spec.params[key]
        if _is_target_node(value) or _matches(value, hint):
            continue
        problems.append(
            f"{sub} = {_show(value)} ({type(value).__name__}) must be {_type_name(hint)} "
            f"({'argument' if spec.kind == 'parameter' else 'key'} {key} of {owner})"
        )


def _unknown_key(path: str, key: str, spec: _Spec) -> str:
    names = sorted(spec.params)
    known = f"{spec.kind}s: {', '.join(names)}" if names else f"it takes no {spec.kind}s"
    message = f"{path} is not a {spec.kind} of {spec.owner} ({known})"
    close = difflib.get_close_matches(str(key), names, n=1)
    return message + (f"; did you mean {close[0]}?" if close else "")


# --- schemas


def _schema_for(path: str) -> type | None:
    return next((s for pattern, s in SCHEMAS.items() if _path_matches(pattern, path)), None)


def _path_matches(pattern: str, path: str) -> bool:
    """``train_data.sources.*`` matches ``train_data.sources.lfw``; ``""`` the root."""
    wanted, parts = pattern.split("."), path.split(".")
    if len(wanted) != len(parts):
        return False
    return all(w in ("*", p) for w, p in zip(wanted, parts, strict=True))


def _schema_spec(schema: type) -> _Spec:
    owner = f"{schema.__module__}.{schema.__qualname__}"
    hints = typing.get_type_hints(schema)
    params = {f.name: (hints[f.name], owner) for f in dataclasses.fields(schema)}
    return _Spec(owner, "key", params)


# --- _target_ nodes


def _target_spec(node: dict, path: str, problems: list[str]) -> _Spec | None:
    """The parameters of ``node``'s target (and of where its ``**kwargs`` go); None: unknown."""
    target = node["_target_"]
    if target is _UNRESOLVED:
        return None
    if not isinstance(target, str):
        problems.append(f"{path}._target_ = {_show(target)} must be an import path (str)")
        return None
    try:
        from hydra._internal.utils import _locate

        obj = _locate(target)
    except Exception as e:  # any import error of the target's module
        problems.append(f"{path}._target_ = {target!r} cannot be imported: {_one_line(e)}")
        return None
    spec = _callable_spec(obj, target)
    for _ in range(3):  # follow **kwargs through at most three hops
        if spec is None or not spec.open:
            break
        receiver = _kwargs_receiver(obj, node, path, problems)
        if receiver is None:
            break
        obj = receiver
        spec = _merge(spec, _callable_spec(obj, _qualname(obj)))
    return spec


def _callable_spec(obj: Any, owner: str) -> _Spec | None:
    """The keyword parameters of a callable (a class: its ``__init__``), with their types."""
    if inspect.isclass(obj) and _bare_init(obj):
        return _Spec(owner, "parameter")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: keys are still checked, types are not
        hints = {}
    spec = _Spec(owner, "parameter")
    for name, p in signature.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            spec.open = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            spec.params[name] = (hints.get(name, Any), owner)
    return spec


def _bare_init(cls: type) -> bool:
    """A class whose ``__init__`` is ``object``'s or ``nn.Module``'s takes no keywords."""
    nn = sys.modules.get("torch.nn")
    bare = [object.__init__] + ([nn.Module.__init__] if nn is not None else [])
    return any(cls.__init__ is init for init in bare)


def _merge(outer: _Spec, inner: _Spec | None) -> _Spec:
    """``outer`` with the parameters of ``inner``, which receives its ``**kwargs``."""
    if inner is None:
        return outer  # the receiver cannot be read: any other key is accepted, as **kwargs is
    params = {**inner.params, **outer.params}
    return _Spec(f"{outer.owner} -> {inner.owner}", "parameter", params, inner.open)


def _kwargs_receiver(obj: Any, node: dict, path: str, problems: list[str]) -> Any:
    """Where ``obj`` passes its ``**kwargs``, when that is known; else None."""
    forward = KWARGS_FORWARDS.get(_qualname(obj))
    if forward is not None:
        return forward(node, path, problems)
    return _returned_class(obj)


def _returned_class(obj: Any) -> type | None:
    """The class a ``def f(**kw) -> SomeClass`` function passes its keywords to."""
    if inspect.isclass(obj):
        return None
    try:
        params = inspect.signature(obj).parameters.values()
        returned = typing.get_type_hints(obj).get("return")
    except Exception:
        return None
    only_kwargs = params and all(p.kind is p.VAR_KEYWORD for p in params)
    return returned if only_kwargs and inspect.isclass(returned) else None


def _registered_backbone(node: dict, path: str, problems: list[str]) -> Any:
    """``create_model(name, **kwargs)`` passes ``kwargs`` to the backbone registered as name."""
    from face_rec.models import registry

    name = node.get("name")
    if not isinstance(name, str):
        return None  # missing or not a str: reported against create_model's name: str
    names = registry.list_models()
    if name not in names:
        problems.append(
            f"{_join(path, 'name')} = {name!r}: unknown backbone {name!r}; "
            f"choose one of {', '.join(names)}"
        )
        return None
    return registry._MODELS[name]


#: qualified name of a callable -> (node, path, problems) -> where its **kwargs go
KWARGS_FORWARDS: dict[str, typing.Callable[[dict, str, list[str]], Any]] = {
    "face_rec.models.registry.create_model": _registered_backbone,
}


# --- types


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits an annotation (True where the annotation cannot be checked)."""
    if value is _UNRESOLVED or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in _UNION_ORIGINS:
        return _union_matches(value, typing.get_args(hint))
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    base = origin or hint
    if base in _SEQUENCES:
        return _sequence_matches(value, base, typing.get_args(hint))
    if base in _MAPPINGS:
        return isinstance(value, dict)
    return _scalar_matches(value, hint)


def _scalar_matches(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return isinstance(value, (str, PurePath))
    return True  # any other class: cannot be checked


def _union_matches(value: Any, members: tuple) -> bool:
    members = tuple(m for m in members if not _is_tensor(m))
    if not all(_checkable(m) for m in members):
        return True
    return any(_matches(value, m) for m in members)


def _sequence_matches(value: Any, base: Any, args: tuple) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    if not args or args == ((),):
        return True
    if base is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(value) == len(args) and all(map(_matches, value, args))
    return all(_matches(v, args[0]) for v in value)


def _checkable(hint: Any) -> bool:
    """Whether :func:`_matches` can tell a wrong value for this annotation."""
    origin = typing.get_origin(hint)
    if origin in _UNION_ORIGINS:
        return all(_checkable(m) for m in typing.get_args(hint) if not _is_tensor(m))
    if origin is Literal or hint is None or hint is type(None):
        return True
    if (origin or hint) in _SEQUENCES + _MAPPINGS:
        return True
    return hint in (bool, int, float, str) or (inspect.isclass(hint) and issubclass(hint, PurePath))


def _is_tensor(hint: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and inspect.isclass(hint) and issubclass(hint, torch.Tensor)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_ORIGINS:
        return " | ".join(_type_name(m) for m in args if not _is_tensor(m))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is None or hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return "str (a path)"
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]" if args else str(origin)
    return getattr(hint, "__name__", str(hint))


# --- small helpers


def _is_target_node(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _show(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
