"""The authors' release (github rmjrmj/MALN, commit 7ff1318) names its layers differently: its
state-dict keys mapped to this repository's (release_state), used by MALN.from_release."""

import re

import torch


RELEASE_NAMES = {  # modality -> (Transformer / projection prefix, GRUModel, encoder suffix, unimodal classifier)
    "t": ("Text", "TexGRU", "text", "fc_text"),
    "a": ("Acoustic", "AcousticGRU", "acoustic", "fc_audio"),
    "v": ("Visual", "VisualGRU", "visual", "fc_visual"),
}
RELEASE_MODALITY_INDEX = {"t": 0, "v": 1, "a": 2}  # the release's modality-discriminator targets
RELEASE_REQUIRED_KEYS = ["fc.3.weight", "modal_discriminator.3.weight", "av_fc.weight", "TexGRU.gru.weight_hh_l0",
                         "fc_text.0.weight", "Text_Topic_Transformer_Speaker.pos_encoder.weight",
                         "Text_Topic_Transformer_Speaker.encoder.layers.0.fc.0.weight",
                         *(f"{names[0]}TopicFc.weight" for names in RELEASE_NAMES.values())]


def release_state(model, state, config, name):
    """The release's state dict with this model's names and layout, for `model` (of `config`)."""
    mapped, prefixes = {}, release_prefixes()
    for key in model.state_dict():
        release = release_key(key, prefixes)
        if release not in state or not isinstance(state[release], torch.Tensor):
            raise ValueError(f"{name}: not a state dict of the release's MALN (no tensor {release!r})")
        value = state[release]
        if key.endswith(".cls"):
            value = value.reshape(-1)                                                         # (1, 1, D) -> (D,)
        elif key.endswith("positions.weight"):
            value = value[:config.max_positions]
        elif key.startswith("amdm.discriminator.3."):
            if value.dim() == 0 or value.shape[0] != len(RELEASE_MODALITY_INDEX):
                raise ValueError(f"{name}: {release!r} is of shape {tuple(value.shape)}, the release's discriminator has one per "
                                 f"modality ({len(RELEASE_MODALITY_INDEX)})")
            value = value[[RELEASE_MODALITY_INDEX[m] for m in config.modalities]]             # the release's rows are t, v, a
        mapped[key] = value
    return mapped


def release_prefixes():
    """This model's state-dict prefixes -> the release's (its layers are named differently)."""
    prefixes = {"amdm.shared_common.": "common_feature_extractor_share.", "amdm.discriminator.": "modal_discriminator.",
                "cross.project_others.": "av_fc.", "cross.to_others.": "L_AV.layers.0.src_cross_attention.",
                "cross.from_others.": "L_AV.layers.0.context_cross_attention.", "cross.fuse.": "L_AV.layers.0.",
                "classifier.": "fc."}
    for m, (name, gru, encoder, unimodal) in RELEASE_NAMES.items():
        for index, party in enumerate(("Lisener", "Speaker")):                     # party 0 takes the release's Lisener
            transformer = f"{name}_Topic_Transformer_{party}."
            prefixes.update({f"sclm.{m}.transformers.{index}.layers.": transformer + "encoder.layers.",
                             f"sclm.{m}.transformers.{index}.cls": transformer + "cls_token",
                             f"sclm.{m}.transformers.{index}.positions.": transformer + "pos_encoder.",
                             f"sclm.{m}.transformers.{index}.norm.": transformer + "norm."})
        prefixes.update({f"sclm.{m}.project.": f"{name}TopicFc.", f"context.{m}.gru.": f"{gru}.gru.",
                         f"context.{m}.project.0.": f"{gru}.linear.", f"amdm.specific.{m}.": f"specific_feature_extractor_{encoder}.",
                         f"amdm.common.{m}.": f"common_feature_extractor_{encoder}.", f"amdm.unimodal.{m}.": f"{unimodal}."})
    return prefixes


def release_key(key, prefixes):
    """The release's name of this model's state-dict entry `key`, given release_prefixes()."""
    prefix = max((p for p in prefixes if key.startswith(p)), key=len)                     # the longest that fits
    rest = re.sub(r"(^|\.)attention\.", r"\1self_attention.", key[len(prefix):])
    return prefixes[prefix] + re.sub(r"(^|\.)feedforward\.", r"\1fc.", rest)


def release_state_dict(state, name):
    """The release's state dict in `state` (bare, or as {'model_state_dict': ...}), checked to hold a weight
    matrix under every key its sizes are read from; one line naming `name` otherwise."""
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{name}: not a state dict of the release's MALN")
    missing = [key for key in RELEASE_REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"{name}: not a state dict of the release's MALN (no {missing[0]!r})")
    flat = next((key for key in RELEASE_REQUIRED_KEYS if not (isinstance(state[key], torch.Tensor) and state[key].dim() == 2)), None)
    if flat:
        shape = f"of shape {tuple(state[flat].shape)}" if isinstance(state[flat], torch.Tensor) else f"a {type(state[flat]).__name__}"
        raise ValueError(f"{name}: not a state dict of the release's MALN ({flat!r} is {shape}, not a weight matrix)")
    return state


def release_config_args(state, max_positions):
    """The MALNConfig fields the release's tensors tell (feature sizes, classes, layer sizes), its SCLM
    mode, and a position table of at most `max_positions` rows."""
    sizes = {m: state[f"{names[0]}TopicFc.weight"].shape[1] for m, names in RELEASE_NAMES.items()}
    transformer = "Text_Topic_Transformer_Speaker.encoder.layers."
    gru_hidden = state["TexGRU.gru.weight_hh_l0"].shape[1]
    return {"feature_sizes": sizes, "n_classes": state["fc.3.weight"].shape[0],
            "max_positions": min(max_positions, state["Text_Topic_Transformer_Speaker.pos_encoder.weight"].shape[0]),
            "sclm_mode": "release", "speaker_size": state["TextTopicFc.weight"].shape[0],
            "sclm_layers": len({key[len(transformer):].split(".")[0] for key in state if key.startswith(transformer)}),
            "sclm_feedforward": state[transformer + "0.fc.0.weight"].shape[0],
            "context_hidden": gru_hidden if gru_hidden != sizes["t"] else 0,
            "hidden_size": state["fc_text.0.weight"].shape[0],
            "discriminator_hidden": state["modal_discriminator.0.weight"].shape[0]}
