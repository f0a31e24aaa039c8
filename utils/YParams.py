"""YAML configuration objects (as published: ``YParams(yaml_path, config_name)``).

A config file holds several named configs; YAML anchors and merge keys (``<<: *base``) share
defaults between them. ``YParams`` exposes one config with attribute access
(``params.lr``), item access (``params['lr']``), ``params.get(key, default)`` and assignment.
Every key the config does not give is set to its default from ``utils/config_schema.py`` at
load (the one place the defaults live), so code reads ``params.lr`` without a fallback.

Paths: relative values of path keys (``*_path``, ``pretrained``) in a config FILE are
resolved against the repository root, so a config means the same files from any working
directory. Values given on the command line with ``--set`` are resolved against the current
working directory, like every other command-line path.
"""
import copy
import logging
import os
import re
import stat

import yaml

from utils.config_schema import defaults, validate
from utils.errors import ConfigError, UserError  # noqa: F401  (re-exported: part of this API)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-3, 1E-3) as floats.

    PyYAML follows YAML 1.1, where `1e-3` is a string; the published configs write `lr: 1E-3`.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text_or_stream):
    """yaml.safe_load with merge keys and YAML 1.2-style exponent floats."""
    return yaml.load(text_or_stream, Loader=_Loader)


# parsed YAML files by (path, file identity and times, size): a sweep worker reads the same
# config file twice per trial (training and test evaluation), ~25 ms of parsing each time for
# operators_poisson.yaml; an edited or replaced file has another key and is parsed again
_PARSED = {}
_PARSED_MAX = 16


def read_yaml(yaml_path, what="config file", error=ConfigError):
    """The top-level mapping of a YAML file, parsed with `load_yaml` (THE YAML reader of the
    project: configs and sweep files). Raises `error` (one line) for a missing or unparseable
    file or one that does not hold a mapping. Returns a fresh copy the caller may change."""
    try:
        st = os.stat(yaml_path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise error(f"{what} not found: {yaml_path}")
    key = (os.path.abspath(yaml_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
           st.st_ctime_ns)
    doc = _PARSED.get(key)
    if doc is None:
        try:
            with open(yaml_path) as f:
                doc = load_yaml(f)
        except yaml.YAMLError as e:
            raise error(f"cannot parse {what} {yaml_path}: {str(e).splitlines()[0]}") from e
        if not isinstance(doc, dict):
            raise error(f"{what} {yaml_path} does not hold a YAML mapping")
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = doc
    return copy.deepcopy(doc)


def is_path_key(key):
    """Config keys whose string values are file-system paths."""
    return key.endswith("_path") or key == "pretrained"


def resolve_path(value, base):
    """A path value (str, or a list of them: a split of several files) with its relative
    entries made absolute against `base`; other values unchanged."""
    if isinstance(value, list):
        return [resolve_path(v, base) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value):
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    return value


class YParams:
    """One named config of a YAML file.

    Args:
        yaml_path: the YAML file (relative to the CWD or absolute).
        config_name: a top-level key of that file.
    Raises:
        ConfigError: missing/unreadable file, or unknown config name (the message lists the
            available names).
    """

    def __init__(self, yaml_path, config_name):
        self._yaml_path = os.path.abspath(yaml_path)
        self._config_name = config_name
        doc = read_yaml(yaml_path)
        if config_name not in doc:
            names = ", ".join(sorted(str(k) for k in doc))
            raise ConfigError(f"unknown config '{config_name}' in {yaml_path}; available: {names}")
        cfg = doc[config_name]
        if not isinstance(cfg, dict):
            raise ConfigError(f"config '{config_name}' in {yaml_path} is not a mapping")
        params = copy.deepcopy(cfg)
        # every key the config does not give takes its default (utils/config_schema.py)
        for key, value in defaults().items():
            params.setdefault(key, copy.deepcopy(value))
        validate(params, f"config '{config_name}' of {yaml_path}")   # types, ranges, names
        for key, value in params.items():
            if is_path_key(key):
                params[key] = resolve_path(value, REPO_ROOT)
        # stored in __dict__ under a private name; everything else goes through _params
        self.__dict__["_params"] = params

    # attribute and item access ---------------------------------------------------------
    def __getattr__(self, key):
        params = self.__dict__.get("_params", {})
        if key in params:
            return params[key]
        raise AttributeError(f"config has no key '{key}'")

    def __setattr__(self, key, value):
        if key.startswith("_"):
            self.__dict__[key] = value
        else:
            self._params[key] = value

    def __getitem__(self, key):
        return self._params[key]

    def __setitem__(self, key, value):
        self._params[key] = value

    def __contains__(self, key):
        return key in self._params

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)

    def get(self, key, default=None):
        return self._params.get(key, default)

    def keys(self):
        return self._params.keys()

    def update(self, mapping):
        """Set several keys at once (e.g. from a W&B sweep trial)."""
        for k, v in dict(mapping).items():
            self._params[k] = v

    def to_dict(self):
        """A deep copy of the config as a plain dict (YAML/JSON serialisable values)."""
        return copy.deepcopy(self._params)

    @property
    def params(self):
        """The underlying dict (published name)."""
        return self._params

    @property
    def config_name(self):
        return self._config_name

    @property
    def yaml_path(self):
        return self._yaml_path

    def log(self):
        logging.info("------------------ config %s ------------------", self._config_name)
        for k, v in self._params.items():
            logging.info("  %s: %s", k, v)

    def __repr__(self):
        return f"YParams({self._yaml_path!r}, {self._config_name!r})"


def parse_overrides(items):
    """Parse ``--set key=value`` strings; values are read as YAML (``load_yaml``).

    Returns a dict in the given order. Raises ConfigError on a malformed item.
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value '{raw}'") from e
        out[key] = value
    return out


def apply_overrides(params, items):
    """Apply ``--set key=value`` overrides after loading a config.

    Every key and value is checked against utils/config_schema.py (`validate`): an unknown
    key or a bad value is a ConfigError (one line). Path values are resolved against the CWD.
    Returns the dict of applied overrides.
    """
    overrides = validate(parse_overrides(items), "--set")
    for key, value in overrides.items():
        if is_path_key(key):
            value = resolve_path(value, os.getcwd())
        params[key] = value
    return overrides
