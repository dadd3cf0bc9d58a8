"""Make tests/data/release_reference.pt: the authors' release, run, small enough to ship.

    python tests/make_release_reference.py --release=PATH_TO_MALN_CLONE [--out=tests/data/release_reference.pt]

Runs the release's own MALN_model_fix.py (github rmjrmj/MALN, commit 7ff1318) from a clone of
it, and writes what tests/test_release.py compares MALN.from_release against. Needs torch,
einops and scikit-learn (the release imports them); nothing of this repository is imported.

How the release is shrunk. The release hard-codes its sizes (text 1024, visual 512, audio 100,
hidden 100, speaker vector 100, 5000 position rows). The script reads MALN_model_fix.py as text
and replaces each hard-coded size in memory, by the exact fragments of substitutions() in one
pass (each must occur as often as listed, so a different version of the file stops here), with
those of SIZES: text 20, visual 14, audio 10, hidden 16, speaker 6, position rows 22, SCLM
Transformers of 2 layers with feed-forward size 24 (released: 1 layer, 128; a second layer puts
the layers' outer residual to the test), and 8 for the 768 of an unused layer; the file is about
0.5 MB. The sizes differ from one another, so a size read from the wrong tensor gives a model
that does not load. Nothing else of the source is changed; it is executed as a module, seeded
(--seed, default 0). Two imports get stand-ins: the four Albert names it imports from
transformers and never uses (recent transformers has no load_tf_weights_in_albert), and
MALN_model/until_config.py where the clone lacks it (until_module imports its PretrainedConfig,
which only classes MALN does not use need).

The committed tests/data/release_reference.pt was made from MALN_model_fix.py as stored at
commit 4445c5a (sha256 1f2e6877...; the newest stored version, with MALN_model/until_module.py of
commit 0fb3404), run with --commit=4445c5acd3c61cb4631fdceb4cef15c14630706d. Run at the shared
file's sizes on its weights, that file gives ../shared/data/release_reference.pt's outputs (made
at 7ff1318) to 5e-7, and its losses to 2e-7 relative.

What it writes (load with torch.load(path, weights_only=True)), the layout of
../shared/data/release_reference.pt (its README), at these sizes:
- release_commit (the clone's HEAD, or --commit), feature_sizes {'t', 'a', 'v'}, n_classes 6
- state_dict: the release MALN's full state dict after a seeded init (its key names)
- batches: DIALOGUES, three padding-free batches (3 dialogues of 6 utterances, 2 of 10, 1 of 4;
  both parties speak in each), random inputs in the release's layouts: inputs text / audio / visual (N, B, D), qmask (N, B, 2), umask (B, N),
  labels (B, N); `eval`: the release's forward with training=False in eval mode (log_probs and
  log_probs_text / _audio / _visual (N, B, 6), specific_* and common_* (B, N, hidden));
  `train_without_dropout`: its forward with training=True in train mode with every dropout 0,
  the losses as its train_MALN.py forms them (classification, unimodal, orthogonal_specific,
  orthogonal_common, adversarial, adversarial_and_orthogonal = its all_loss, total)
"""

import argparse
import collections
import hashlib
import os
import re
import subprocess
import sys
import types

import torch
import torch.nn as nn

RELEASE_COMMIT = "7ff1318fedda9bd643b67dba368d49a71d138212"
SIZES = dict(text=20, visual=14, audio=10, hidden=16, speaker=6, positions=22, sclm_layers=2, feedforward=24,
             unused_text=8)  # unused_text: the 768 of an unused layer
DIALOGUES = [(3, 6), (2, 10), (1, 4)]  # (dialogues, utterances) of each batch
N_CLASSES = 6
RELEASE_ARGS = dict(dropout=0.66, cross_n_heads=4, cross_n_layers=1)  # the release train script's defaults


def substitutions(s):
    """(release text, shrunk text, how often it occurs); s: SIZES."""
    T, V, A, H, S = s["text"], s["visual"], s["audio"], s["hidden"], s["speaker"]
    return [
        # the SCLM Transformers: layers, feed-forward size, position rows
        ("num_layers=1, nhead=1, dropout=0.1, dim_feedforward=128, max_seq_length=5000",
         f"num_layers={s['sclm_layers']}, nhead=1, dropout=0.1, dim_feedforward={s['feedforward']}, "
         f"max_seq_length={s['positions']}", 1),
        # feature sizes: SCLM Transformers (built and called), context GRUs, unused constants
        ("d_model=1024", f"d_model={T}", 4), ("d_model=512", f"d_model={V}", 4), ("d_model=100", f"d_model={A}", 4),
        ("GRUModel(D_m = 1024, D_h = 1024, D_e = 1024)", f"GRUModel(D_m = {T}, D_h = {T}, D_e = {T})", 1),
        ("GRUModel(D_m = 512, D_h = 512, D_e = 512)", f"GRUModel(D_m = {V}, D_h = {V}, D_e = {V})", 1),
        ("GRUModel(D_m = 100, D_h = 100, D_e = 100)", f"GRUModel(D_m = {A}, D_h = {A}, D_e = {A})", 1),
        ("LANGUAGE_DIM = 1024", f"LANGUAGE_DIM = {T}", 1), ("ACOUSTIC_DIM = 100", f"ACOUSTIC_DIM = {A}", 1),
        ("VISUAL_DIM = 512", f"VISUAL_DIM = {V}", 1), ("fusion_dim=1024", f"fusion_dim={T}", 1),
        # speaker vectors: the projections from each feature size, the unused speaker embedding
        ("nn.Linear(1024, 100)", f"nn.Linear({T}, {S})", 1),
        ("self.AcousticTopicFc = nn.Linear(100, 100)", f"self.AcousticTopicFc = nn.Linear({A}, {S})", 1),
        ("nn.Linear(512, 100)", f"nn.Linear({V}, {S})", 1),
        ("nn.Embedding(2, 100)", f"nn.Embedding(2, {S})", 1), ("LayerNorm(100, eps=1e-12)", f"LayerNorm({S}, eps=1e-12)", 1),
        # specific and common encoders: [context ; speaker] -> hidden
        ("nn.Linear(1024+100, 100)", f"nn.Linear({T}+{S}, {H})", 2),
        ("nn.Linear(512+100, 100)", f"nn.Linear({V}+{S}, {H})", 2),
        ("nn.Linear(100+100, 100)", f"nn.Linear({A}+{S}, {H})", 2),
        # unused layers over feature sizes
        ("nn.Linear(100, 512)", f"nn.Linear({A}, {V})", 1),
        ("nn.Linear(1024+100+512, 1024)", f"nn.Linear({T}+{A}+{V}, {T})", 1),
        ("nn.Linear(1024+768, 100+512)", f"nn.Linear({T}+{s['unused_text']}, {A}+{V})", 1),
        ("nn.Linear(100+512, 512)", f"nn.Linear({A}+{V}, {V})", 1),
        # the hidden size everywhere else: cross-modal attention, classifiers, discriminator
        ("CrossAttentionLayer(100, 100,", f"CrossAttentionLayer({H}, {H},", 1),
        ("TransformerLayer(dim_feedforward=300,hidden_size=300)",
         f"TransformerLayer(dim_feedforward={3 * H},hidden_size={3 * H})", 1),
        ("nn.Linear(300, 100)", f"nn.Linear({3 * H}, {H})", 2),
        ("nn.Linear(200, 100)", f"nn.Linear({2 * H}, {H})", 2),
        ("nn.Linear(100, 100 // 2)", f"nn.Linear({H}, {H} // 2)", 1),
        ("nn.Linear(100 // 2, 3)", f"nn.Linear({H} // 2, 3)", 1),
        ("nn.Linear(100, 100)", f"nn.Linear({H}, {H})", 4),
        ("nn.Linear(100, 6)", f"nn.Linear({H}, {N_CLASSES})", 5),
    ]


def shrunk_source(source, path, sizes):
    """The release's source with its hard-coded sizes replaced, all fragments in one pass (the longest first where
    two start at the same place); stops at a fragment that is not there as often as listed."""
    table = {old: (new, count) for old, new, count in substitutions(sizes)}
    pattern = re.compile("|".join(re.escape(old) for old in sorted(table, key=len, reverse=True)))
    found = collections.Counter(pattern.findall(source))
    for old, (_, count) in table.items():
        if found[old] != count:
            raise SystemExit(f"{path}: {old!r} occurs {found[old]} times, not {count}: "
                             f"not the release this script shrinks (rmjrmj/MALN {RELEASE_COMMIT[:7]})")
    return pattern.sub(lambda match: table[match.group()][0], source)


def release_commit(folder, given):
    """The commit the release files are from: --commit, else the clone's HEAD."""
    if given:
        return given
    try:
        git = subprocess.run(["git", "-C", folder, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             check=True)
        top, head = git.stdout.split()
    except (OSError, ValueError, subprocess.CalledProcessError):
        top, head = None, None
    if top is None or os.path.realpath(top) != os.path.realpath(folder):
        raise SystemExit(f"{folder}: not the top of a git clone, so its commit is unknown; say which it is with --commit")
    return head


def stand_in_imports(folder):
    """Modules the release imports but does not use: stand-ins in sys.modules."""
    transformers = types.ModuleType("transformers")
    for name in ("AlbertModel", "AlbertPreTrainedModel", "AlbertConfig", "load_tf_weights_in_albert"):
        setattr(transformers, name, None)
    sys.modules["transformers"] = transformers
    if not os.path.exists(os.path.join(folder, "MALN_model", "until_config.py")):
        print(f"{folder}: no MALN_model/until_config.py; its PretrainedConfig (used by no class MALN needs) is a stand-in")
        until_config = types.ModuleType("MALN_model.until_config")
        until_config.PretrainedConfig = object
        sys.modules["MALN_model.until_config"] = until_config


def load_release(folder, sizes):
    """The release's MALN_model_fix.py, shrunk to `sizes`, as a module."""
    path = os.path.join(folder, "MALN_model_fix.py")
    if not os.path.isfile(path):
        raise SystemExit(f"{folder}: no MALN_model_fix.py here; --release is a clone of github rmjrmj/MALN")
    with open(path, "rb") as f:
        raw = f.read()
    print(f"running {path} (sha256 {hashlib.sha256(raw).hexdigest()})")
    stand_in_imports(folder)
    sys.path.insert(0, os.path.abspath(folder))  # for its `from MALN_model.until_module import ...`
    module = types.ModuleType("release_MALN_model_fix")
    module.__file__ = path
    try:
        exec(compile(shrunk_source(raw.decode("utf-8"), path, sizes), path, "exec"), module.__dict__)
    except ModuleNotFoundError as error:
        raise SystemExit(f"{path}: the release imports {error.name!r}, which is not installed (pip install {error.name})") from None
    return module


def make_batch(n_dialogues, n_utterances, sizes, generator):
    """Random padding-free inputs in the release's layouts; both parties speak in every dialogue."""
    N, B = n_utterances, n_dialogues
    speakers = torch.randint(0, 2, (N, B), generator=generator)
    speakers[:2] = torch.tensor([0, 1]).unsqueeze(1)                                   # both parties speak
    return {"text": torch.randn(N, B, sizes["text"], generator=generator),          # (N, B, D_t)
            "audio": torch.randn(N, B, sizes["audio"], generator=generator),        # (N, B, D_a)
            "visual": torch.randn(N, B, sizes["visual"], generator=generator),      # (N, B, D_v)
            "qmask": nn.functional.one_hot(speakers, 2).float(),                    # (N, B, 2)
            "umask": torch.ones(B, N),                                              # (B, N)
            "labels": torch.randint(0, N_CLASSES, (B, N), generator=generator)}     # (B, N)


def run(model, training, batch):
    """The release's forward as its train_MALN.py calls it (the x1..x6, o1..o3 it ignores are None)."""
    return model(training, batch["labels"], batch["text"], batch["visual"], batch["audio"],
                 *[None] * 9, batch["qmask"], batch["umask"])


def eval_outputs(model, batch):
    model.eval()
    with torch.no_grad():
        _, out, out_audio, out_text, out_visual, _, specific_t, specific_v, specific_a, _, common_t, common_v, common_a = \
            run(model, False, batch)
    outputs = {"log_probs": out, "log_probs_audio": out_audio, "log_probs_text": out_text, "log_probs_visual": out_visual,
               "specific_text": specific_t, "specific_visual": specific_v, "specific_audio": specific_a,
               "common_text": common_t, "common_visual": common_v, "common_audio": common_a}
    return {name: value.contiguous().clone() for name, value in outputs.items()}


def without_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, nn.GRU):
            module.dropout = 0.0
    return model


def train_losses(release, model, batch):
    """The release's training losses with every dropout 0, each term as the release computes it."""
    model.train()
    with torch.no_grad():
        all_loss, _, out, out_audio, out_text, out_visual, _, _, specific_t, specific_v, specific_a, _, common_t, common_v, common_a = \
            run(model, True, batch)
    nll, labels, umask = release.MaskedNLLLoss(), batch["labels"].view(-1), batch["umask"]

    def flat(log_probs):  # (N, B, C) -> (B*N, C), as its train script does
        return log_probs.transpose(0, 1).contiguous().view(-1, log_probs.size(2))

    orthogonal = model.calculate_orthogonality_loss
    discriminated = [(specific_t, 0), (specific_v, 1), (specific_a, 2), (common_t, 0), (common_v, 1), (common_a, 2)]
    losses = {"classification": nll(flat(out), labels, umask),
              "unimodal": sum(nll(flat(lp), labels, umask) for lp in (out_audio, out_text, out_visual)),
              "orthogonal_specific": orthogonal(specific_t, specific_v) + orthogonal(specific_t, specific_a)
                                     + orthogonal(specific_v, specific_a),
              "orthogonal_common": orthogonal(common_t, specific_t) + orthogonal(common_v, specific_v)
                                   + orthogonal(common_a, specific_a),
              "adversarial": sum(model.adv_loss(model.modal_discriminator(x).view(-1, 3), torch.full((x.shape[0] * x.shape[1],), m))
                                 for x, m in discriminated),
              "adversarial_and_orthogonal": all_loss}
    losses["total"] = 0.1 * losses["unimodal"] + losses["classification"] + all_loss
    recomputed = 0.01 * losses["adversarial"] + 5e-6 * (losses["orthogonal_specific"] + losses["orthogonal_common"])
    torch.testing.assert_close(recomputed, all_loss, rtol=1e-6, atol=0)  # the terms are the ones inside its forward
    return {name: value.detach().clone() for name, value in losses.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="a clone of github rmjrmj/MALN (commit 7ff1318)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "release_reference.pt"))
    parser.add_argument("--commit", default="", help="the commit of the release files, when --release is no git clone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    release = load_release(args.release, SIZES)
    commit = release_commit(args.release, args.commit)
    print(f"release commit {commit}" + ("" if commit == RELEASE_COMMIT else f" (this repository follows {RELEASE_COMMIT})"))
    torch.manual_seed(args.seed)
    model = release.MALN(argparse.Namespace(**RELEASE_ARGS))
    generator = torch.Generator().manual_seed(args.seed)
    batches = [make_batch(B, N, SIZES, generator) for B, N in DIALOGUES]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    for batch in batches:
        batch["eval"] = eval_outputs(model, batch)
    without_dropout(model)
    for batch in batches:
        batch["train_without_dropout"] = train_losses(release, model, batch)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"release_commit": commit, "feature_sizes": {"t": SIZES["text"], "a": SIZES["audio"], "v": SIZES["visual"]},
                "n_classes": N_CLASSES, "state_dict": state, "batches": batches}, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): {len(state)} tensors, batches of {DIALOGUES} (dialogues, utterances)")


if __name__ == "__main__":
    main()
