"""The command line of train_MALN.py: --name=value overrides onto its settings with a preset's
values under them (parse_settings), and the check of every value before any data is read
(check_config). The settings that are MALNConfig fields (MODEL_KEYS) are checked by the model's
own rules (maln/config_rules.py), the others by CONSTRAINTS here. A run to resume brings
its saved settings, which meet the same checks, named by the file (resumed_config)."""

import os
from dataclasses import fields

import torch

from dataloader import MODALITIES
from MALN_model_fix import CONTEXT_ENCODERS, MALN, MALNConfig
from maln.config_rules import config_errors
from maln.cli import parse_options, read_settings_file
from maln.files import LAST_CHECKPOINT_FIELDS, check_checkpoint, check_regular_file, load_checkpoint
from utils import resolve_device

SIZED_BY_THE_DATA = ("feature_sizes", "n_classes", "max_positions")  # max_positions: a setting whose 0 sizes it from the data
MODEL_KEYS = [f.name for f in fields(MALNConfig) if f.name not in SIZED_BY_THE_DATA]  # the settings that are MALNConfig fields


CONSTRAINTS = {  # the settings that are no model's: name -> (what a valid value is, test of the value given the whole config)
    "dataset": ("'IEMOCAP', 'MELD' or 'demo' (any name with --features)", lambda v, c: v in ("IEMOCAP", "MELD", "demo") or c["features"]),
    "modalities": (f"a subset of {''.join(MODALITIES)!r}, each letter once (empty = all)",
                   lambda v, c: set(v) <= set(MODALITIES) and len(set(v)) == len(v)),
    "valid_fraction": ("in (0, 1)", lambda v, c: 0 < v < 1),
    "select_on": ("'valid' or 'test' (the release's optimistic protocol)", lambda v, c: v in ("valid", "test")),
    "split_seed": (">= 0", lambda v, c: v >= 0),
    "demo_seed": (">= 0", lambda v, c: v >= 0),
    "demo_common": (">= 0 and finite, and given only with the generated demo set (--dataset=demo, no --features)",
                    lambda v, c: 0 <= v < float("inf") and (v == 0 or (c["dataset"] == "demo" and not c["features"]))),
    **{name: (">= 1", lambda v, c: v >= 1) for name in ("epochs", "batch_size")},
    "max_positions": (">= 2, or 0 (sized from the training split)", lambda v, c: v == 0 or v >= 2),
    "weight_decay": (">= 0 and finite", lambda v, c: 0 <= v < float("inf")),
    "learning_rate": ("> 0 and finite", lambda v, c: 0 < v < float("inf")),
    "average_decay": ("in [0, 1)", lambda v, c: 0 <= v < 1),
    "lr_schedule": ("'cosine' or 'constant'", lambda v, c: v in ("cosine", "constant")),
    "reversal_schedule": ("'constant' or 'dann'", lambda v, c: v in ("constant", "dann")),
    "seed": (">= 0", lambda v, c: v >= 0),
    "threads": (">= 0 (0 = torch's default)", lambda v, c: v >= 0),
    "seeds": ("comma-separated integers >= 0, each once, e.g. 1,2,3", lambda v, c: not v or seed_list_of(v) is not None),
    "device": ("'auto', 'cpu', or an available 'cuda' / 'cuda:N' / 'mps'", lambda v, c: device_available(v)),
    "context_encoder": (f"a name of MALN_model_fix.CONTEXT_ENCODERS ({', '.join(CONTEXT_ENCODERS)})",
                        lambda v, c: v in CONTEXT_ENCODERS),
}


def seed_list_of(text):
    """The seeds of a --seeds value, e.g. '1,2,3' -> [1, 2, 3]; None unless each is an integer >= 0 given once."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdecimal() for part in parts) or len(set(map(int, parts))) != len(parts):
        return None
    return [int(part) for part in parts]


def check_config(config):
    """Stop with one message naming every setting whose value is out of its range, each on a line:
    those of MODEL_KEYS by MALNConfig's rules, the others by CONSTRAINTS."""
    wrong = [f"--{name}={config[name]}: must be {requirement}" for name, (requirement, valid) in CONSTRAINTS.items()
             if name in config and not valid(config[name], config)]
    wrong += [f"--{name}={value}: must be {requirement}"
              for name, value, requirement in config_errors({k: config[k] for k in MODEL_KEYS if k in config})]
    if wrong:
        raise SystemExit("\n".join(wrong))
    return config


def device_available(name):
    try:
        device = resolve_device(name)
    except ValueError:  # not a device name, or a cuda device this machine does not have
        return False
    return device.type in ("cpu", "cuda") or (device.type == "mps" and torch.backends.mps.is_available())


SETTINGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")  # --preset=NAME: config/NAME.py


def parse_settings(argv, defaults):
    """-> (config, origins). The top of train_MALN.py (`defaults`) is what trains, unless the command line
    names something over it: first the settings file of --preset=NAME (config/NAME.py, also when `preset`
    is set at the top), then each settings file given as a bare argument, in order, then every
    --name=value, which wins. `origins` maps each setting whose value differs from the top of the script
    to where that value came from. --dataset chooses the data and its label set, nothing else."""
    config, given = parse_options(argv, defaults, files=True)
    files = config.pop("__files__")
    origin = {name: "the command line" for name in given}
    if config["preset"]:
        files = [preset_path(config["preset"])] + files
    from_files = {}
    for path in files:
        values = read_settings_file(path, defaults)
        if "preset" in values:
            raise SystemExit(f"{path}: a settings file may not name a preset (give both on the command line)")
        widened = [name for name in SAFETY_SWITCHES if name in values]
        if widened:
            raise SystemExit(f"{path}: a settings file may not set {widened[0]}; only the command line widens trust")
        from_files.update(values)
        origin.update({name: path for name in values if name not in given})
    config.update({name: value for name, value in from_files.items() if name not in given})
    config = check_config(config)
    return config, {name: origin.get(name, "the top of train_MALN.py")
                    for name in config if config[name] != defaults[name]}


def preset_path(name):
    """config/<name>.py of a --preset (the names are case-insensitive), or one line naming the presets there."""
    path = os.path.join(SETTINGS_DIR, f"{name.lower()}.py")
    if not name.replace("_", "").replace("-", "").isalnum() or not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(SETTINGS_DIR) if f.endswith(".py")) if os.path.isdir(SETTINGS_DIR) else []
        raise SystemExit(f"--preset={name}: no settings file config/{name.lower()}.py; choose one of {', '.join(known)}")
    return os.path.relpath(path)


def override_lines(config, origins, defaults):
    """'Overriding: name = value (from where; the top of train_MALN.py has ...)', a line per setting of `origins`."""
    return [f"Overriding: {name} = {config[name]!r} (from {source}; the top of train_MALN.py has {defaults[name]!r})"
            for name, source in origins.items()]


SAFETY_SWITCHES = ("trust_pickle",)  # never taken from a file: only the command line widens trust


def resumed_config(config, given, defaults):
    """The saved settings of the run in config['resume'] (over the `defaults`, for a setting it saved none of);
    only --device, --epochs (check_resumed_epochs) and --threads may change.
    A safety switch (trust_pickle) is never read from the run folder: it is the command line's, whatever
    last.pt says, so a shared run folder cannot make this process unpickle code."""
    changed = given - {"resume", "device", "epochs", "threads", *SAFETY_SWITCHES}
    if changed:
        raise SystemExit(f"--resume continues a run with its own settings; only --device, --epochs, --threads and "
                         f"--trust_pickle may be given with it, not {', '.join('--' + name for name in sorted(changed))}")
    path = os.path.join(config["resume"], "last.pt")
    try:
        if not os.path.lexists(path) and os.path.isdir(config["resume"]):
            raise ValueError(f"{config['resume']} holds no last.pt: no epoch of that run finished, so there is nothing to "
                             f"resume; remove the directory, or start a new run under another --run_name")
        last = load_checkpoint(path)
        check_checkpoint(last, path, LAST_CHECKPOINT_FIELDS)
        saved = {name: value for name, value in last["config"].items() if name not in SAFETY_SWITCHES}
        check_saved_config(saved, path, defaults, given)
        check_saved_model(saved, last, path, defaults)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: cannot resume: {error}") from None
    resumed = check_config({**defaults, **saved, **{name: config[name] for name in given}})
    check_resumed_epochs(resumed, saved.get("epochs", resumed["epochs"]), last["epoch"])
    return resumed


def check_resumed_epochs(config, saved_epochs, finished):
    """A resumed run equals an uninterrupted one of config['epochs'] epochs: --epochs may extend a run whose
    learning rate does not depend on the epoch count (constant), not a cosine run, whose finished epochs
    followed the decay over saved_epochs; and it may not end before the `finished` epochs."""
    epochs = config["epochs"]
    if epochs < finished:
        raise SystemExit(f"error: --epochs={epochs}: the run to resume has finished {finished} epochs already")
    if epochs != saved_epochs and config["lr_schedule"] == "cosine":
        raise SystemExit(f"error: --epochs={epochs}: this run's cosine schedule decays over its {saved_epochs} epochs and "
                         f"a resumed run keeps it (another --epochs would change the learning rate in mid-run); resume "
                         f"without --epochs, or start a new run of {epochs} epochs")


SAVED_PATHS = ("features", "av_features")  # input files a saved config names: checked like command-line paths


def check_saved_config(saved, path, defaults, given=()):
    """Every saved setting this version knows has the type of its default (an int where a float is
    expected is fine) and meets its rule (MALNConfig's or CONSTRAINTS), and every input file it names is
    a regular file; the message names the file and the setting, not a flag the user never typed. Those
    the command line gives (`given`) are the command line's to check."""
    for name, value in saved.items():
        kind = type(defaults.get(name, value))
        if not (type(value) is kind or (kind is float and type(value) is int)):
            raise ValueError(f"{path}: its saved setting {name}={value!r} is not a {kind.__name__}")
    merged = {**defaults, **saved}
    wrong = [(name, saved[name], requirement) for name, (requirement, valid) in CONSTRAINTS.items()
             if name in saved and not valid(saved[name], merged)]
    wrong += config_errors({k: merged[k] for k in MODEL_KEYS if k in merged})
    for name, value, requirement in wrong:
        if name in saved and name not in given:
            raise ValueError(f"{path}: its saved setting {name}={value!r} must be {requirement}")
    for name in SAVED_PATHS:
        if saved.get(name):
            try:
                check_regular_file(saved[name], "feature file")
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"{path}: its saved setting {name}: {error}") from None


def check_saved_model(saved, last, path, defaults):
    """The model the saved settings build is the one last.pt holds (its model_args, sized against its
    tensors before anything is allocated): run() builds it from those settings before loading last.pt."""
    MALN.checkpoint_config(last, path)
    for name in MODEL_KEYS:
        if name in last["model_args"] and saved.get(name, defaults.get(name)) != last["model_args"][name]:
            raise ValueError(f"{path}: its saved setting {name}={saved.get(name)!r} is not the one its model was built "
                             f"with (field 'model_args': {name}={last['model_args'].get(name)!r})")
