"""The rules of MALNConfig's values: the one place they are checked, for MALNConfig(...), a
checkpoint's model_args and train_MALN.py's settings (training/configurator.py)."""

import numbers


def is_count(value, low):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def is_fraction(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1


def is_weight(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < float("inf")


CONFIG_RULES = {  # MALNConfig field -> (what a valid value is, test of the value given the other fields): the one
    # place the model's values are checked, for MALNConfig(...), a checkpoint's model_args and train_MALN.py's settings
    "n_classes": ("a whole number >= 1", lambda v, c: is_count(v, 1)),
    "max_positions": ("a whole number >= 2 (the longest dialogue + 1)", lambda v, c: is_count(v, 2)),
    **{name: ("a whole number >= 1", lambda v, c: is_count(v, 1))
       for name in ("sclm_layers", "sclm_heads", "sclm_feedforward", "speaker_size", "gru_layers", "hidden_size",
                    "discriminator_hidden")},
    "cross_heads": ("a whole number >= 1 that divides hidden_size",
                    lambda v, c: is_count(v, 1) and (not is_count(c.get("hidden_size"), 1) or c["hidden_size"] % v == 0)),
    "context_hidden": ("a whole number >= 0 (0 = the feature size)", lambda v, c: is_count(v, 0)),
    **{name: ("True or False", lambda v, c: isinstance(v, bool))
       for name in ("standardize", "adversarial", "orthogonality", "cross_attention", "utterance_skip",
                     "party_chain")},
    **{name: ("a number in [0, 1)", lambda v, c: is_fraction(v))
       for name in ("input_dropout", "sclm_dropout", "context_dropout", "specific_dropout", "common_dropout",
                    "discriminator_dropout", "dropout")},
    **{name: ("a finite number >= 0", lambda v, c: is_weight(v))
       for name in ("gradient_reversal", "unimodal_weight", "adversarial_weight", "orthogonality_weight")},
    "sclm_mode": ("'speaker', 'utterance', 'release' or 'off'", lambda v, c: v in ("speaker", "utterance", "release", "off")),
    "sclm_positions": ("'release' or 'small'", lambda v, c: v in ("release", "small")),
    "sclm_fusion": ("'concat', 'gate' or 'correct'", lambda v, c: v in ("concat", "gate", "correct")),
    "adversarial_objective": ("'reversal' or 'confusion'", lambda v, c: v in ("reversal", "confusion")),
    "common_last_layer": ("'shared' or 'separate'", lambda v, c: v in ("shared", "separate")),
    "cross_input": ("'common' or 'specific'", lambda v, c: v in ("common", "specific")),
}


def config_errors(values):
    """(field, value, what a valid value is) for every field of `values` that breaks its CONFIG_RULES;
    `values` may hold some of the fields only (train_MALN.py checks its model settings so)."""
    return [(name, value, CONFIG_RULES[name][0]) for name, value in values.items()
            if name in CONFIG_RULES and not CONFIG_RULES[name][1](value, values)]
