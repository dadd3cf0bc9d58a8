"""The authors' trained model as a checkpoint of this repository, instead of training:
`python train_MALN.py --from_release=FILE --dataset=IEMOCAP` writes out_dir/run_name/best.pt from
the release's state dict (MALN.from_release), which --predict, MALN.from_checkpoint and the
exports accept."""

import os

from dataloader import CLASS_NAMES
from MALN_model_fix import MALN
from maln.files import check_output_path, save_checkpoint


def convert_release(config):
    """--from_release=FILE: the release's trained MALN as out_dir/run_name/best.pt, which --predict,
    MALN.from_checkpoint and the exports accept."""
    heads = {"sclm_heads": config["sclm_heads"], "cross_heads": config["cross_heads"]}  # the release's tensors do not tell them
    model = MALN.from_release(config["from_release"], **heads)
    names = [name.strip() for name in config["class_names"].split(",")] if config["class_names"] \
        else CLASS_NAMES.get(config["dataset"], [])
    if len(names) != model.config.n_classes or not all(names):
        raise SystemExit(f"--class_names: {config['from_release']} has {model.config.n_classes} classes; name them in "
                         f"order, e.g. --class_names=hap,sad,neu,ang,exc,fru (IEMOCAP's)")
    if len(set(names)) != len(names):
        raise SystemExit(f"--class_names={config['class_names']}: names a class twice; each of the "
                         f"{model.config.n_classes} classes needs its own name")
    path = os.path.join(config["out_dir"], config["run_name"] or "release", "best.pt")
    check_output_path(path, "--run_name", [config["from_release"]])
    save_checkpoint({"model": model.state_dict(), "model_args": model.model_args(), "config": config,
                     "class_names": names, "epoch": 0, "metrics": {}, "release_file": config["from_release"]}, path)
    print(f"wrote {path}: the release's model ({model.n_parameters() / 1e6:.2f}M parameters, feature sizes "
          f"{model.config.feature_sizes}, classes {', '.join(names)}; attention heads, which the release's tensors do "
          f"not tell, from the command line: {' '.join(f'--{k}={v}' for k, v in heads.items())})")
