"""
MALN: Multimodal Adversarial Learning Network for conversational emotion recognition.

Ren, Huang, Liu, Liu, Li, Liu. IEEE Transactions on Circuits and Systems for Video
Technology 33(11):6965-6980, 2023. The whole model is in this file, modules in the order
the data flows through them:

    [input standardisation]  ->  SCLM (stage 1)  ->  context encoders  ->  AMDM (stage 2:
    specific / common encoders, gradient reversal, modality discriminator, orthogonality)
    ->  cross-modal attention  ->  emotion classifier (stage 3)

The layers are the authors' release (github rmjrmj/MALN, commit 7ff1318), and
MALN.from_release loads its weights: with `sclm_mode="release"` and padding-free dialogues this
model computes what the release computes (tests/test_release.py). What differs is corrected on
purpose and holds for every setting: padding is excluded everywhere (attention keys, the GRUs
run on packed sequences, the losses), SCLM's release mode works for any number of parties, a
single-modality run does not fuse its common vector twice. Options that are not the release's
(input standardisation, input dropout, the paper's per-party SCLM, a per-utterance SCLM) are
switches of MALNConfig.

Modalities are named 't' (text), 'a' (audio) and 'v' (visual); any non-empty subset runs.
Feature sizes and the class count come from the data through MALNConfig.

One source of defaults: MALNConfig's are the release's (sclm_mode='release', dropout=0.66, no
input standardisation, ...), as nanoGPT's GPTConfig holds GPT-2's. They are the reference the
maths is checked against, MALN.from_release builds them, and they do not move. What
train_MALN.py trains is its own settings (the paper's per-party SCLM, dropout 0.3, standardised
inputs, ...) with the dataset's preset on top (a per-utterance SCLM on the demo set;
--preset=released gives the release's back). Those differ per dataset, so no single default
could be them: the script builds its MALNConfig in one visible place, build_model (model_args =
{k: config[k] for k in MODEL_KEYS} and the data's sizes), and saves model_args in every
checkpoint. In a notebook, MALN(MALNConfig(feature_sizes=..., n_classes=...)) is the release's
model for your sizes; the model a run trained is MALN.from_checkpoint("saved_models/RUN/best.pt").
The value of every field is checked here only (CONFIG_RULES, in MALNConfig.__post_init__);
train_MALN.py applies the same rules to its settings.
"""

import numbers
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from maln.files import check_state_shapes, load_checkpoint, load_model_state

MODALITY_ORDER = "tav"


@dataclass
class MALNConfig:
    feature_sizes: dict = field(default_factory=lambda: {"t": 1024, "a": 100, "v": 512})
    n_classes: int = 6
    max_positions: int = 128        # longest dialogue + 1 ([CLS]) the position table holds
    standardize: bool = False       # standardise each input dimension with training-set statistics (not in the release)
    input_dropout: float = 0.0      # dropout on the (standardised) features before SCLM and the context encoders (not in the release)
    # stage 1: speaker-characteristic learning module
    sclm_mode: str = "release"      # 'release' (two whole-dialogue Transformers), 'speaker' (per-party, the paper),
                                    # 'utterance' (each utterance over its own party's utterances), 'off'
    sclm_layers: int = 1
    sclm_heads: int = 1
    sclm_feedforward: int = 128
    sclm_dropout: float = 0.1
    sclm_positions: str = "release" # SCLM's position table drawn from 'release': N(0, 1) (nn.Embedding's default, as
                                    # released), or 'small': N(0, 0.02^2), so positions do not swamp standardised features
    speaker_size: int = 100         # size of the projected speaker-characteristic vector
    # context encoders
    gru_layers: int = 2
    context_hidden: int = 0         # GRU hidden size; 0 = the modality's input size (released)
    context_dropout: float = 0.5    # between the GRU layers and on the context output (released: GRUModel's 0.5)
    # stage 2: adversarial multimodal decomposition module
    hidden_size: int = 100          # size of specific and common vectors
    specific_dropout: float = 0.1
    common_dropout: float = 0.3
    common_last_layer: str = "shared"  # the common encoders' last layer: 'shared' by every modality (released) or 'separate'
    discriminator_hidden: int = 50
    discriminator_dropout: float = 0.1
    gradient_reversal: float = 1.0  # lambda of the gradient reversal layer
    adversarial_objective: str = "reversal"  # what the common encoders do against the discriminator: 'reversal' (released:
                                    # maximise its loss through the gradient reversal) or 'confusion' (make its prediction uniform)
    adversarial: bool = True        # modality-discriminator losses on/off
    orthogonality: bool = True      # difference losses on/off
    cross_attention: bool = True    # cross-modal attention on/off
    cross_input: str = "common"     # 'common' (the release) or 'specific' (the paper's wording)
    cross_heads: int = 4
    # stage 3 and shared
    dropout: float = 0.66           # classifier, unimodal classifiers and cross-modal attention (released: 0.66)
    # loss weights (released)
    unimodal_weight: float = 0.1
    adversarial_weight: float = 0.01
    orthogonality_weight: float = 5e-6

    def __post_init__(self):
        unknown = set(self.feature_sizes) - set(MODALITY_ORDER)
        if not self.feature_sizes or unknown:
            raise ValueError(f"feature_sizes must use a non-empty subset of {MODALITY_ORDER!r}, got {self.feature_sizes}")
        if not all(is_count(size, 1) for size in self.feature_sizes.values()):
            raise ValueError(f"feature_sizes must be whole numbers >= 1, got {self.feature_sizes}")
        self.feature_sizes = {m: int(self.feature_sizes[m]) for m in MODALITY_ORDER if m in self.feature_sizes}
        wrong = config_errors(vars(self))
        if wrong:
            name, value, requirement = wrong[0]
            raise ValueError(f"{name}={value!r}: must be {requirement}")

    @property
    def modalities(self):
        return list(self.feature_sizes)


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
       for name in ("standardize", "adversarial", "orthogonality", "cross_attention")},
    **{name: ("a number in [0, 1)", lambda v, c: is_fraction(v))
       for name in ("input_dropout", "sclm_dropout", "context_dropout", "specific_dropout", "common_dropout",
                    "discriminator_dropout", "dropout")},
    **{name: ("a finite number >= 0", lambda v, c: is_weight(v))
       for name in ("gradient_reversal", "unimodal_weight", "adversarial_weight", "orthogonality_weight")},
    "sclm_mode": ("'speaker', 'utterance', 'release' or 'off'", lambda v, c: v in ("speaker", "utterance", "release", "off")),
    "sclm_positions": ("'release' or 'small'", lambda v, c: v in ("release", "small")),
    "adversarial_objective": ("'reversal' or 'confusion'", lambda v, c: v in ("reversal", "confusion")),
    "common_last_layer": ("'shared' or 'separate'", lambda v, c: v in ("shared", "separate")),
    "cross_input": ("'common' or 'specific'", lambda v, c: v in ("common", "specific")),
}


def config_errors(values):
    """(field, value, what a valid value is) for every field of `values` that breaks its CONFIG_RULES;
    `values` may hold some of the fields only (train_MALN.py checks its model settings so)."""
    return [(name, value, CONFIG_RULES[name][0]) for name, value in values.items()
            if name in CONFIG_RULES and not CONFIG_RULES[name][1](value, values)]


class Standardizer(nn.Module):
    """Per-dimension standardisation of one modality's features, (x - mean) / std, with the
    training set's statistics held as buffers, so a checkpoint carries them. Not in the paper:
    sentence-encoder features share a large common offset (on the MiniLM IEMOCAP text the
    mean vector has 72% of the average norm), which the context GRU otherwise has to learn away."""

    def __init__(self, size):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    @torch.no_grad()
    def fit(self, features):
        # features (n, D): every real training utterance
        features = features.double()
        std = features.std(0, correction=0)
        self.mean.copy_(features.mean(0))
        self.scale.copy_(torch.where(std > 1e-6, 1 / std, 1.0))                           # a constant dimension is only centred

    def forward(self, features):
        return (features - self.mean) * self.scale                                          # (B, N, D)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention as released: query, key and value projections,
    dropout on the attention weights, no output projection. `allowed` is a boolean mask
    (True = may attend); the release has none, so it also attends to padding."""

    def __init__(self, size, heads, dropout):
        super().__init__()
        if size % heads:
            raise ValueError(f"attention over vectors of size {size} cannot have {heads} heads (they must divide it)")
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = nn.Linear(size, size), nn.Linear(size, size), nn.Linear(size, size)

    def forward(self, queries, keys, allowed):
        # queries (B, Lq, D), keys (B, Lk, D), allowed (B, Lq, Lk) or (B, 1, Lk)
        B, Lq, D = queries.shape
        q = self.query(queries).view(B, Lq, self.heads, D // self.heads).transpose(1, 2)   # (B, H, Lq, D/H)
        k = self.key(keys).view(B, -1, self.heads, D // self.heads).transpose(1, 2)        # (B, H, Lk, D/H)
        v = self.value(keys).view(B, -1, self.heads, D // self.heads).transpose(1, 2)      # (B, H, Lk, D/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1),
                                           dropout_p=self.dropout if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, Lq, D)                                         # (B, Lq, D)


class EncoderLayer(nn.Module):
    """Post-LayerNorm encoder layer as released: attention, then `feedforward`, each with dropout,
    residual and LayerNorm."""

    def __init__(self, size, heads, dropout, feedforward):
        super().__init__()
        self.attention = Attention(size, heads, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(size), nn.LayerNorm(size)
        self.feedforward = feedforward
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, allowed, n_queries=None):
        # x (B, L, D); only the first n_queries rows are computed (all when None)
        queries = x if n_queries is None else x[:, :n_queries]
        allowed = allowed if n_queries is None else allowed[:, :n_queries]
        y = self.norm1(queries + self.dropout(self.attention(queries, x, allowed)))
        return self.norm2(y + self.dropout(self.feedforward(y)))


class SpeakerTransformer(nn.Module):
    """The Transformer of SCLM as released: learned [CLS] and positions, input LayerNorm, encoder
    layers each with an outer residual (x + layer(x)).

    Reads `n_summaries` [CLS] tokens followed by the utterances and returns the [CLS] outputs;
    the last layer computes only those rows, since nothing reads the utterance rows after it
    (with `keep_utterances`, every row is computed and returned).
    """

    def __init__(self, size, config):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(size))                                          # N(0, 1), as released
        self.positions = nn.Embedding(config.max_positions, size)
        if config.sclm_positions == "small":
            nn.init.normal_(self.positions.weight, std=0.02)                                # (max_positions, D)
        self.norm = nn.LayerNorm(size)
        self.layers = nn.ModuleList(
            EncoderLayer(size, config.sclm_heads, config.sclm_dropout,
                         nn.Sequential(nn.Linear(size, config.sclm_feedforward), nn.ReLU(), nn.Linear(config.sclm_feedforward, size)))
            for _ in range(config.sclm_layers))

    def forward(self, features, n_summaries, allowed, keep_utterances=False):
        # features (B, N, D); allowed (B, S+N, S+N) over the token sequence [CLS x S ; utterances]
        B, N, D = features.shape
        if N + 1 > self.positions.num_embeddings:
            raise ValueError(f"a dialogue of {N} utterances exceeds max_positions={self.positions.num_embeddings}")
        position = self.positions(torch.arange(N + 1, device=features.device))          # (N+1, D)
        summaries = (self.cls + position[0]).expand(B, n_summaries, D)                  # (B, S, D)
        x = self.norm(torch.cat([summaries, features + position[1:]], dim=1))           # (B, S+N, D)
        for i, layer in enumerate(self.layers):
            n_queries = n_summaries if i == len(self.layers) - 1 and not keep_utterances else None
            x = (x if n_queries is None else x[:, :n_queries]) + layer(x, allowed, n_queries)
        return x                                                                         # (B, S, D), or (B, S+N, D)


class SCLM(nn.Module):
    """Speaker-characteristic learning module (paper, stage 1), one per modality.

    'release': the authors' module, two Transformers that both read the whole dialogue (padding
    masked); party 0 takes the first one's summary (the release's `*_Lisener`), party 1 the
    second's (`*_Speaker`), and so does every further party (the release would scale the second
    summary by the party index). 'speaker': the paper's intent, one [CLS] per party attending only
    over that party's own utterances, so every utterance gets its own speaker's vector, for any
    number of parties. 'utterance' (not in the paper): no [CLS]; each utterance's own row,
    attending over its party's utterances, so the vector can differ along a speaker's turns.
    The result is projected to `speaker_size`.
    """

    def __init__(self, size, config):
        super().__init__()
        self.mode = config.sclm_mode
        self.transformers = nn.ModuleList(SpeakerTransformer(size, config)
                                          for _ in range(2 if self.mode == "release" else 1))
        self.project = nn.Linear(size, config.speaker_size)

    def forward(self, features, speakers, n_parties, utterance_mask):
        # features (B, N, D), speakers (B, N) party index < n_parties, utterance_mask (B, N) True at real utterances
        B, N, _ = features.shape
        if self.mode == "speaker":
            party = torch.where(utterance_mask, speakers, -1)                                   # (B, N), padding = -1
            token_party = torch.cat([torch.arange(n_parties, device=speakers.device).expand(B, -1), party], 1)  # (B, P+N)
            same_party = token_party.unsqueeze(2) == token_party.unsqueeze(1)                   # (B, P+N, P+N)
            summaries = self.transformers[0](features, n_parties, same_party)                  # (B, P, D)
            vectors = torch.gather(summaries, 1, speakers.unsqueeze(-1).expand(-1, -1, summaries.size(-1)))  # (B, N, D)
        elif self.mode == "utterance":
            party = torch.where(utterance_mask, speakers, -1)                                   # (B, N), padding = -1
            same_party = party.unsqueeze(2) == party.unsqueeze(1)                               # (B, N, N)
            vectors = self.transformers[0](features, 0, same_party, keep_utterances=True)       # (B, N, D)
        else:
            real_tokens = torch.cat([utterance_mask.new_ones(B, 1), utterance_mask], 1)        # (B, 1+N)
            allowed = real_tokens.unsqueeze(1).expand(B, N + 1, N + 1)
            first, second = (t(features, 1, allowed) for t in self.transformers)              # (B, 1, D) each
            vectors = torch.where((speakers == 0).unsqueeze(-1), first, second)                # (B, N, D)
        return self.project(vectors)                                                           # (B, N, speaker_size)


class GRURecurrence(torch.autograd.Function):
    """The recurrent half of a bidirectional GRU layer, both directions at once, over packed rows.

    Step t owns the packed rows start_t : start_t + batch_sizes[t]; the second direction's rows
    come in reversed time (see reversed_rows), so both directions run forward. Same maths as
    nn.GRU (gates r, z, n); backward computes the recurrent weight gradient in one matmul over
    all steps, where autograd through per-step cells would accumulate one matmul per step.
    """

    @staticmethod
    def forward(ctx, gates_input, weight_hh, bias_hh, batch_sizes):
        # gates_input (2, n, 3G) = W_ih x + b_ih per row; weight_hh (2, 3G, G); bias_hh (2, 3G); batch_sizes list
        _, n, G3 = gates_input.shape
        G = G3 // 3
        hidden = gates_input.new_empty(2, n, G)
        reset_update = gates_input.new_empty(2, n, 2 * G)
        new, hidden_new = gates_input.new_empty(2, n, G), gates_input.new_empty(2, n, G)
        weight, bias = weight_hh.transpose(1, 2), bias_hh.unsqueeze(1)                   # (2, G, 3G), (2, 1, 3G)
        h_prev, start = gates_input.new_zeros(2, batch_sizes[0], G), 0
        for b in batch_sizes:
            rows = slice(start, start + b)
            h_prev = h_prev[:, :b]                                                          # (2, b, G)
            gh = torch.baddbmm(bias, h_prev, weight)                                        # (2, b, 3G)
            gi = gates_input[:, rows]
            rz = torch.sigmoid(gi[..., :2 * G] + gh[..., :2 * G])                           # (2, b, 2G)
            n_t = torch.tanh(torch.addcmul(gi[..., 2 * G:], rz[..., :G], gh[..., 2 * G:]))  # (2, b, G)
            hidden[:, rows] = torch.addcmul(n_t, rz[..., G:], h_prev - n_t)                 # h = (1 - z) n + z h_prev
            reset_update[:, rows], new[:, rows], hidden_new[:, rows] = rz, n_t, gh[..., 2 * G:]
            h_prev, start = hidden[:, rows], start + b
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(weight_hh, hidden, reset_update, new, hidden_new)
        return hidden                                                                       # (2, n, G)

    @staticmethod
    def backward(ctx, grad_hidden):
        weight_hh, hidden, reset_update, new, hidden_new = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        _, n, G = hidden.shape
        starts = [0] + torch.tensor(batch_sizes).cumsum(0).tolist()[:-1]
        grad_gh = hidden.new_empty(2, n, 3 * G)                                             # gradient of W_hh h + b_hh
        grad_new_input = hidden.new_empty(2, n, G)                                          # gradient of the n gate's input
        carry = None                                                                        # gradient reaching h_{t} from step t+1
        for t in reversed(range(len(batch_sizes))):
            b, rows = batch_sizes[t], slice(starts[t], starts[t] + batch_sizes[t])
            dh = grad_hidden[:, rows]
            if carry is not None:
                dh = torch.cat([dh[:, :carry.size(1)] + carry, dh[:, carry.size(1):]], 1)  # (2, b, G)
            h_prev = hidden[:, starts[t - 1]:starts[t - 1] + b] if t > 0 else hidden.new_zeros(2, b, G)
            r, z, n_t = reset_update[:, rows, :G], reset_update[:, rows, G:], new[:, rows]
            d_new = dh * (1 - z) * (1 - n_t * n_t)                                          # through tanh
            d_reset = d_new * hidden_new[:, rows] * r * (1 - r)                             # through sigmoid
            d_update = dh * (h_prev - n_t) * z * (1 - z)
            grad_gh[:, rows] = torch.cat([d_reset, d_update, d_new * r], -1)
            grad_new_input[:, rows] = d_new
            carry = torch.baddbmm(dh * z, grad_gh[:, rows], weight_hh)                      # (2, b, G)
        previous = torch.cat([hidden.new_zeros(2, batch_sizes[0], G)]
                             + [hidden[:, starts[t - 1]:starts[t - 1] + batch_sizes[t]] for t in range(1, len(batch_sizes))], 1)
        grad_weight = grad_gh.transpose(1, 2) @ previous                                    # (2, 3G, G), one matmul
        grad_input = torch.cat([grad_gh[..., :2 * G], grad_new_input], -1)                  # (2, n, 3G)
        return grad_input, grad_weight, grad_gh.sum(1), None


def reversed_rows(batch_sizes):
    """Permutation of packed rows that reverses every sequence within its own length (its own inverse)."""
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes                                   # (T,)
    step = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)            # (n,)
    sequence = torch.arange(len(step)) - offsets[step]                                     # (n,)
    lengths = (batch_sizes.unsqueeze(0) > torch.arange(int(batch_sizes[0])).unsqueeze(1)).sum(1)  # (B,)
    return offsets[lengths[sequence] - 1 - step] + sequence


def stacked_bidirectional_gru(gru, data, batch_sizes):
    """A stacked bidirectional nn.GRU over packed rows with its own weights, one layer at a time:
    cuDNN's single-layer GRU on cuda, bidirectional_gru_layer on cpu, and between the layers torch's
    dropout on every device. nn.GRU's own inter-layer dropout on cuda draws from a state cuDNN keeps
    per process, outside torch's generator, so a resumed run could not repeat it; here every mask
    comes from torch's generator, whose state last.pt holds. data (n, I), batch_sizes (T,) cpu -> (n, 2G)."""
    reverse = reversed_rows(batch_sizes).to(data.device) if not data.is_cuda else None
    for layer in range(gru.num_layers):
        weights = [getattr(gru, f"{name}_l{layer}{suffix}") for suffix in ("", "_reverse")
                   for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")]
        if data.is_cuda:
            data = cudnn_bidirectional_gru_layer(weights, data, batch_sizes, gru.training)
        else:
            data = bidirectional_gru_layer(weights, data, batch_sizes, reverse)
        if layer < gru.num_layers - 1:
            data = F.dropout(data, gru.dropout, gru.training)
    return data


def bidirectional_gru_layer(weights, data, batch_sizes, reverse):
    """One bidirectional GRU layer over packed rows, for cpu: input matmuls over all rows at once,
    then GRURecurrence. weights: w_ih, b_ih, w_hh, b_hh, then the same of the reverse direction;
    reverse = reversed_rows(batch_sizes). data (n, I) -> (n, 2G)."""
    gates = torch.stack([F.linear(data, weights[0], weights[1]),                                      # (2, n, 3G), the second
                         F.linear(data[reverse], weights[4], weights[5])])                            # direction in reversed time
    hidden = GRURecurrence.apply(gates, torch.stack([weights[2], weights[6]]), torch.stack([weights[3], weights[7]]),
                                 batch_sizes.tolist())
    in_order, reversed_hidden = hidden.unbind(0)                                                      # (n, G) each
    return torch.cat([in_order, reversed_hidden[reverse]], -1)                                        # (n, 2G)


def cudnn_bidirectional_gru_layer(weights, data, batch_sizes, training):
    """One bidirectional GRU layer over packed rows with cuDNN (the kernel nn.GRU calls), no dropout
    inside it. weights as bidirectional_gru_layer's. data (n, I) -> (n, 2G)."""
    w_ih, b_ih, w_hh, b_hh, *reverse = weights
    flat = [w_ih, w_hh, b_ih, b_hh, reverse[0], reverse[2], reverse[1], reverse[3]]                 # nn.GRU's order
    hidden = data.new_zeros(2, int(batch_sizes[0]), w_hh.size(1))                                     # (2, B, G)
    with warnings.catch_warnings():  # a layer's weights are a slice of nn.GRU's flat buffer: cuDNN copies them, and says so
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        return torch._VF.gru(data, batch_sizes, hidden, flat, True, 1, 0.0, training, True)[0]       # (n, 2G)


class ContextEncoder(nn.Module):
    """Context encoder (the release's GRUModel): a bidirectional GRU over the dialogue, dropout
    between its layers, then Linear back to the input size, ReLU and dropout. Runs on packed
    sequences, so no work is done on padding and padding does not reach the backward direction:
    stacked_bidirectional_gru (cuDNN's layers on cuda, GRURecurrence on cpu, torch's dropout between)."""

    def __init__(self, size, config):
        super().__init__()
        hidden = config.context_hidden or size
        self.gru = nn.GRU(size, hidden, num_layers=config.gru_layers, bidirectional=True, batch_first=True,
                          dropout=config.context_dropout if config.gru_layers > 1 else 0.0)
        self.project = nn.Sequential(nn.Linear(2 * hidden, size), nn.ReLU(), nn.Dropout(config.context_dropout))

    def forward(self, features, lengths):
        # features (B, N, D), lengths (B,) on cpu
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        output = stacked_bidirectional_gru(self.gru, packed.data, packed.batch_sizes)  # (n_real, 2G)
        output = packed._replace(data=self.project(output))                         # (n_real, D)
        return pad_packed_sequence(output, batch_first=True, total_length=features.size(1))[0]  # (B, N, D)


class GradientReversal(torch.autograd.Function):
    """Identity forward; gradient multiplied by -lambda backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def difference_loss(a, b, utterance_mask):
    """The release's orthogonality loss, mean over dialogues of ||A B^T||_F^2, over real utterances
    only; computed as the Gram product sum((A^T A) * (B^T B)), which costs (N x D^2), not (N^2 x D)."""
    mask = utterance_mask.unsqueeze(-1).to(a.dtype)
    a, b = a * mask, b * mask                                              # (B, N, D), padding zeroed
    return ((a.transpose(1, 2) @ a) * (b.transpose(1, 2) @ b)).sum((1, 2)).mean()


class AMDM(nn.Module):
    """Adversarial multimodal decomposition module (paper, stage 2), without its cross-modal
    attention (CrossModalAttention below): per modality a specific encoder and a common
    encoder whose last layer is shared by all modalities; a modality discriminator that sees
    specific vectors directly and common vectors through gradient reversal; orthogonality
    (difference) losses; unimodal auxiliary classifiers on the common vectors."""

    def __init__(self, config):
        super().__init__()
        extra = 0 if config.sclm_mode == "off" else config.speaker_size
        H = config.hidden_size
        self.config = config
        self.specific = nn.ModuleDict({m: nn.Sequential(nn.Linear(d + extra, H), nn.Dropout(config.specific_dropout), nn.Tanh())
                                       for m, d in config.feature_sizes.items()})
        self.common = nn.ModuleDict({m: nn.Sequential(nn.Linear(d + extra, H), nn.Dropout(config.common_dropout), nn.Tanh())
                                     for m, d in config.feature_sizes.items()})
        last_layer = lambda: nn.Sequential(nn.Linear(H, H), nn.Dropout(config.common_dropout), nn.Tanh())  # noqa: E731
        if config.common_last_layer == "shared":
            self.shared_common = last_layer()
        else:  # each modality its own: whether sharing it is what lets the common vectors meet
            self.separate_common = nn.ModuleDict({m: last_layer() for m in config.feature_sizes})
        self.discriminator = nn.Sequential(nn.Linear(H, config.discriminator_hidden), nn.Dropout(config.discriminator_dropout),
                                           nn.ReLU(), nn.Linear(config.discriminator_hidden, len(config.feature_sizes)))
        self.unimodal = nn.ModuleDict({m: nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(H, config.n_classes))
                                       for m in config.feature_sizes})
        self.reversal_factor = 1.0  # a schedule's factor on gradient_reversal, set by the training loop (not saved)

    def forward(self, inputs):
        # inputs {m: (B, N, D_m + speaker_size)}
        specific = {m: self.specific[m](x) for m, x in inputs.items()}                  # {m: (B, N, H)}
        common = {m: self.common_last(m)(self.common[m](x)) for m, x in inputs.items()}   # {m: (B, N, H)}
        unimodal = {m: F.log_softmax(self.unimodal[m](c), -1) for m, c in common.items()}  # {m: (B, N, C)}
        return specific, common, unimodal

    def common_last(self, m):
        return self.shared_common if self.config.common_last_layer == "shared" else self.separate_common[m]

    def adversarial_losses(self, specific, common, utterance_mask):
        """Cross-entropy of the modality discriminator on specific and (reversed) common vectors,
        summed over the modalities; the target of modality m is its index in config.modalities.
        Beside them, detached, the discriminator's accuracy on each kind over every modality's real
        utterances (watched during training, not a term of the objective; chance is 1 / modalities).

        With adversarial_objective='confusion' the discriminator learns from the common vectors as
        they are (detached), and the common encoders instead minimise, times lambda, the cross-entropy
        of its prediction against the uniform distribution (ln M when it cannot tell): reversing the
        gradient rewards an encoder that makes the discriminator name the wrong modality, which keeps
        the modality as plain as before; confusion rewards only a prediction that cannot tell."""
        real = utterance_mask.reshape(-1)
        losses = {}
        reversal = self.config.gradient_reversal * self.reversal_factor
        confusion = self.config.adversarial_objective == "confusion"
        for kind, vectors, scale in (("specific", specific, None), ("common", common, reversal)):
            loss, correct = 0.0, 0
            for index, m in enumerate(self.config.modalities):
                x = vectors[m].reshape(-1, vectors[m].size(-1))                            # (B*N, H)
                targets = torch.where(real, index, -1)                                      # padding ignored
                if scale is not None and confusion:
                    loss = loss + scale * self.confusion_loss(x, real)
                    x = x.detach()
                elif scale is not None:
                    x = GradientReversal.apply(x, scale)
                logits = self.discriminator(x)                                              # (B*N, M)
                loss = loss + F.cross_entropy(logits, targets, ignore_index=-1)
                correct = correct + (logits.detach().argmax(-1) == targets).sum()
            losses[f"adversarial_{kind}"] = loss
            losses[f"discriminator_{kind}_accuracy"] = correct / (real.sum() * len(self.config.modalities)).clamp(min=1)
        return losses

    def confusion_loss(self, x, real):
        """Cross-entropy between the discriminator's prediction on x (B*N, H) and the uniform
        distribution over modalities, mean over the real rows; its gradient reaches x only, not the
        discriminator."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        log_probs = F.log_softmax(torch.func.functional_call(self.discriminator, frozen, (x,)), -1)   # (B*N, M)
        return -(log_probs.mean(-1) * real).sum() / real.sum().clamp(min=1)

    def orthogonality_losses(self, specific, common, utterance_mask):
        modalities = self.config.modalities
        pairs = [(a, b) for i, a in enumerate(modalities) for b in modalities[i + 1:]]
        return {"orthogonal_specific": sum((difference_loss(specific[a], specific[b], utterance_mask) for a, b in pairs),
                                           specific[modalities[0]].new_zeros(())),
                "orthogonal_common": sum(difference_loss(common[m], specific[m], utterance_mask) for m in modalities)}


class CrossModalAttention(nn.Module):
    """Cross-modal attention layer of AMDM (paper, stage 2; the release's CrossAttentionLayer).
    The first modality (text when present) attends to the projected concatenation of the others
    and they attend to it; the two results (2H) pass self-attention and a ReLU feed-forward,
    each with residual and LayerNorm. With `enabled=False` (ablation) the two inputs are only
    concatenated."""

    def __init__(self, config):
        super().__init__()
        H = config.hidden_size
        self.enabled = config.cross_attention
        self.project_others = nn.Linear(H * (len(config.feature_sizes) - 1), H)
        if self.enabled:
            self.to_others = Attention(H, config.cross_heads, config.dropout)
            self.from_others = Attention(H, config.cross_heads, config.dropout)
            self.fuse = EncoderLayer(2 * H, config.cross_heads, config.dropout, nn.Sequential(nn.Linear(2 * H, 2 * H), nn.ReLU()))

    def forward(self, primary, others, utterance_mask):
        # primary (B, N, H); others list of (B, N, H)
        others = self.project_others(torch.cat(others, -1))                     # (B, N, H)
        if not self.enabled:
            return torch.cat([primary, others], -1)                             # (B, N, 2H)
        allowed = utterance_mask.unsqueeze(1)                                   # (B, 1, N) real keys
        x = torch.cat([self.to_others(primary, others, allowed), self.from_others(others, primary, allowed)], -1)  # (B, N, 2H)
        return self.fuse(x, allowed)                                            # (B, N, 2H)


class MALN(nn.Module):
    """The whole network: [input standardisation] -> SCLM -> context encoders -> AMDM ->
    cross-modal attention -> classifier (paper, stages 1-3). forward() returns log-probabilities
    (fused and unimodal), named losses (when labels are given) and the fused, common and
    specific vectors."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        sizes = config.feature_sizes
        self.standardizer = nn.ModuleDict({m: Standardizer(d) for m, d in sizes.items()}) if config.standardize else None
        self.sclm = nn.ModuleDict({m: SCLM(d, config) for m, d in sizes.items()}) if config.sclm_mode != "off" else None
        self.context = nn.ModuleDict({m: ContextEncoder(d, config) for m, d in sizes.items()})
        self.amdm = AMDM(config)
        H = config.hidden_size
        self.cross = CrossModalAttention(config) if len(sizes) > 1 else None
        self.classifier = nn.Sequential(nn.Linear(self.fused_size(), H), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(H, config.n_classes))

    def fused_size(self):
        """[cross-modal output (2H) ; commonality (H)]; with one modality the commonality alone, or
        beside the specific vector when cross_input is 'specific'."""
        H = self.config.hidden_size
        if self.cross is not None:
            return 3 * H
        return 2 * H if self.config.cross_input == "specific" else H

    def forward(self, batch, class_weights=None):
        """batch: the dict dataloader.collate makes (described here, and only here):
            features        {m: (B, N, D_m)} float, one entry per modality of config.feature_sizes
            speakers        (B, N) int64, each utterance's party index in its dialogue (0, 1, ...)
            utterance_mask  (B, N) bool, True at real utterances, False at padding
            lengths         (B,) int64 on the cpu, the utterances of each dialogue
            labels          (B, N) int64 class index, -1 where unlabelled or padding; the losses are
                            computed when the batch holds labels (absent or None: no losses)
        class_weights: (C,) weights of the classification losses, or None."""
        features, speakers, utterance_mask, lengths = (batch[k] for k in ("features", "speakers", "utterance_mask", "lengths"))
        labels = batch.get("labels")
        inputs = {}
        n_parties = int(speakers.max()) + 1 if self.sclm is not None else 0
        for m in self.config.modalities:
            features_m = self.standardizer[m](features[m]) if self.standardizer is not None else features[m]
            features_m = F.dropout(features_m, self.config.input_dropout, self.training)
            x = self.context[m](features_m, lengths)                                                  # (B, N, D_m)
            if self.sclm is not None:
                x = torch.cat([x, self.sclm[m](features_m, speakers, n_parties, utterance_mask)], -1)  # (B, N, D_m + 100)
            inputs[m] = x
        specific, common, unimodal = self.amdm(inputs)
        commonality = sum(common.values())                                                          # (B, N, H)
        cross_inputs = common if self.config.cross_input == "common" else specific
        first, *rest = self.config.modalities
        if self.cross is not None:
            diversity = self.cross(cross_inputs[first], [cross_inputs[m] for m in rest], utterance_mask)  # (B, N, 2H)
            fused = torch.cat([diversity, commonality], -1)                                         # (B, N, 3H)
        elif self.config.cross_input == "specific":
            fused = torch.cat([specific[first], commonality], -1)                                   # (B, N, 2H)
        else:
            fused = commonality                                                                     # (B, N, H)
        log_probs = F.log_softmax(self.classifier(fused), -1)                                       # (B, N, C)
        output = {"log_probs": log_probs, "unimodal": unimodal, "fused": fused, "common": common, "specific": specific}
        if labels is not None:
            output["losses"] = self.losses(log_probs, unimodal, specific, common, utterance_mask, labels, class_weights)
        return output

    def losses(self, log_probs, unimodal, specific, common, utterance_mask, labels, class_weights):
        """The released objective: NLL(fused) + 0.1 sum_m NLL(unimodal_m)
        + 0.01 (adv_common + adv_specific) + 5e-6 (orth_specific + orth_common). The dict also holds
        the discriminator's accuracies (AMDM.adversarial_losses), which are not terms of the total."""
        config = self.config
        targets = labels.reshape(-1)                                                                # -1 = padding / unlabelled
        any_labelled = (targets >= 0).any()                                                         # no sync

        def nll(lp):  # 0, not NaN (0/0), for a batch without any label
            loss = F.nll_loss(lp.reshape(-1, lp.size(-1)), targets, weight=class_weights, ignore_index=-1)
            return torch.where(any_labelled, loss, torch.zeros_like(loss))

        losses = {"classification": nll(log_probs), "unimodal": sum(nll(lp) for lp in unimodal.values())}
        total = losses["classification"] + config.unimodal_weight * losses["unimodal"]
        if config.adversarial and len(config.modalities) > 1:
            losses.update(self.amdm.adversarial_losses(specific, common, utterance_mask))
            total = total + config.adversarial_weight * (losses["adversarial_common"] + losses["adversarial_specific"])
        if config.orthogonality:
            losses.update(self.amdm.orthogonality_losses(specific, common, utterance_mask))
            total = total + config.orthogonality_weight * (losses["orthogonal_specific"] + losses["orthogonal_common"])
        losses["total"] = total
        return losses

    def fit_standardizer(self, dialogues):
        """Set the standardisation statistics from these (training) dialogues."""
        if self.standardizer is None:
            raise ValueError("this model was built with standardize=False: it has no statistics to fit")
        for m, standardizer in self.standardizer.items():
            standardizer.fit(torch.cat([d.features[m] for d in dialogues]))

    def n_parameters(self):
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu"):
        """A ready model in eval mode from a checkpoint saved by train_MALN.py."""
        checkpoint = load_checkpoint(path, map_location)
        model = cls(cls.checkpoint_config(checkpoint, path))
        load_model_state(model, checkpoint["model"], path)
        model.checkpoint = {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer")}
        return model.to(map_location).eval()

    @classmethod
    def checkpoint_config(cls, checkpoint, path):
        """The MALNConfig of a loaded checkpoint's model_args, checked by its rules, whose model fits the
        checkpoint's tensors: it is built on the meta device first (sizes only, nothing allocated), as
        model_args may claim a model far larger than the file holds."""
        if not isinstance(checkpoint, dict) or not {"model", "model_args"} <= set(checkpoint):
            raise ValueError(f"{path}: not a checkpoint saved by train_MALN.py (it needs 'model' and 'model_args')")
        unknown = set(checkpoint["model_args"]) - {f.name for f in fields(MALNConfig)}
        if unknown:
            raise ValueError(f"{path}: saved with settings this MALNConfig does not have: {', '.join(sorted(unknown))}")
        try:
            config = MALNConfig(**checkpoint["model_args"])
            with torch.device("meta"):
                skeleton = cls(config)
        except (ValueError, TypeError) as error:  # a setting out of its rules, heads that do not divide a size
            raise ValueError(f"{path}: field 'model_args': {error}") from None
        check_state_shapes(skeleton, checkpoint["model"], path)
        return config

    @classmethod
    def from_release(cls, source, max_positions=128, **settings):
        """A ready model in eval mode that computes what the authors' release computes, from the
        state dict of the release's MALN: a dict, or the path of a torch.save file holding one,
        bare or as {'model_state_dict': ...} (what the release's train script saves). Feature
        sizes, the class count and the layer sizes are read from the tensors; position tables
        are cut to `max_positions` rows; the release's unused modules are ignored. `settings`
        change other MALNConfig fields (the heads, which the tensors do not tell, or dropouts)."""
        name = source if isinstance(source, (str, os.PathLike)) else "the release state dict"
        state = load_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
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
        sizes = {m: state[f"{RELEASE_NAMES[m][0]}TopicFc.weight"].shape[1] for m in MODALITY_ORDER}
        transformer = "Text_Topic_Transformer_Speaker.encoder.layers."
        try:
            config = MALNConfig(**{
                "feature_sizes": sizes, "n_classes": state["fc.3.weight"].shape[0],
                "max_positions": min(max_positions, state["Text_Topic_Transformer_Speaker.pos_encoder.weight"].shape[0]),
                "sclm_mode": "release", "speaker_size": state["TextTopicFc.weight"].shape[0],
                "sclm_layers": len({key[len(transformer):].split(".")[0] for key in state if key.startswith(transformer)}),
                "sclm_feedforward": state[transformer + "0.fc.0.weight"].shape[0],
                "context_hidden": state["TexGRU.gru.weight_hh_l0"].shape[1] if state["TexGRU.gru.weight_hh_l0"].shape[1] != sizes["t"] else 0,
                "hidden_size": state["fc_text.0.weight"].shape[0],
                "discriminator_hidden": state["modal_discriminator.0.weight"].shape[0], **settings})
        except (ValueError, TypeError) as error:
            raise ValueError(f"{name}: the sizes of its tensors give no model of this repository ({error})") from None
        with torch.device("meta"):  # the sizes the tensors claim are compared before the model is allocated
            skeleton = cls(config)
        mapped = release_state(skeleton, state, config, name)
        check_state_shapes(skeleton, mapped, name)
        model = cls(config)
        load_model_state(model, mapped, name)
        return model.eval()

    def model_args(self):
        return asdict(self.config)


# ----------------------------------------------------------------------------- the release's key names
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
