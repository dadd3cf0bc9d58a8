"""
MALN: Multimodal Adversarial Learning Network for conversational emotion recognition.

Ren, Huang, Liu, Liu, Li, Liu. IEEE Transactions on Circuits and Systems for Video
Technology 33(11):6965-6980, 2023. The whole model is in this file, modules in the order the
data flows through them. MALN.forward runs, for every modality m:

    features {m: (B, N, D_m)}
        |  [standardise, input dropout]                  (switches; not in the release)
        +---------------------------------+
        v                                 v
    context encoder                   SCLM (stage 1): speaker characteristics
    (bidirectional GRU)               (Transformers over each party's turns)
    (B, N, C_m)                       (B, N, speaker_size)
        +---------------+-----------------+
                        v  concatenated: (B, N, C_m + speaker_size)  [+ the features: utterance_skip]
    AMDM (stage 2): specific and common encoders (B, N, H); a modality discriminator, on the
        common vectors through gradient reversal; orthogonality losses; unimodal classifiers
                        v
    cross-modal attention (stage 2): the first modality against the others (B, N, 2H),
        beside the sum of the common vectors (B, N, H)
                        v
    classifier (stage 3): log-probabilities (B, N, classes)
        [party chain: forward-backward along each party's turns]    (switch; not in the release)

The layers are the authors' release (github rmjrmj/MALN, commit 7ff1318), which runs the context
encoder and SCLM side by side and concatenates them, as above; MALN.from_release loads its weights:
with `sclm_mode="release"` and padding-free dialogues this model computes what the release
computes (tests/test_release.py). What differs is corrected on purpose and holds for every
setting: padding is excluded everywhere (attention keys, the GRUs run on packed sequences, the
losses), SCLM's release mode works for any number of parties, a single-modality run does not fuse
its common vector twice. Options that are not the release's are switches of MALNConfig.

Extension points (docs/extending.md): the modalities are whatever feature_sizes names (the data
names them in dataloader.MODALITIES), the first being cross-modal attention's primary; the context
encoder is a name of CONTEXT_ENCODERS (any module of the documented input and output, whose
output_size AMDM is built for).

MALNConfig's defaults are the release's, the reference the maths is checked against (as
nanoGPT's GPTConfig holds GPT-2's). What train_MALN.py trains is the settings at its top, built
into a MALNConfig in one place (build_model) and saved in every checkpoint:
MALN.from_checkpoint("saved_models/RUN/best.pt") gives a notebook the model a run trained. What
the model stands on lives in maln/: the GRU kernel (gru.py), the value rules (config_rules.py),
the release's key names (release_keys.py) and checkpoint safety (files.py).
"""

import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from maln.config_rules import config_errors, is_count
from maln.files import check_state_shapes, fitted_config, load_checkpoint, load_model_state, on_meta_device
from maln.gru import stacked_bidirectional_gru
from maln.release_keys import release_config_args, release_state, release_state_dict


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
    sclm_fusion: str = "concat"     # how SCLM's vector s meets the context vector c: 'concat' [c ; s] (released), 'gate'
                                    # c * 2 sigmoid(W s) (SCLM scales each context feature), 'correct' c + W s (SCLM shifts it)
    # context encoders
    context_encoder: str = "gru"    # a name of CONTEXT_ENCODERS: 'gru' (the release's bidirectional GRU over the dialogue),
                                    # 'party_gru' (beside it, a GRU along each party's own turns), 'party_mean_gru'
                                    # (that party GRU also given its party's mean), 'party_joint_gru' (that party GRU
                                    # reading every modality's turn), 'speaker_gru' (the dialogue GRU, each turn's
                                    # party one-hot in its input)
    gru_layers: int = 2
    context_hidden: int = 0         # GRU hidden size; 0 = the modality's input size (released)
    context_dropout: float = 0.5    # between the GRU layers and on the context output (released: GRUModel's 0.5)
    utterance_skip: bool = False    # the utterance's own features beside its context vector into AMDM (not in the release)
    party_chain: bool = False       # the classifier's scores smoothed by learned emotion transitions along each party's
                                    # turns (PartyChain: forward-backward marginals; not in the release)
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
        if not (isinstance(self.feature_sizes, dict) and self.feature_sizes
                and all(isinstance(m, str) and m for m in self.feature_sizes)):
            raise ValueError(f"feature_sizes must map one or more modality names to sizes, got {self.feature_sizes}")
        if not all(is_count(size, 1) for size in self.feature_sizes.values()):
            raise ValueError(f"feature_sizes must be whole numbers >= 1, got {self.feature_sizes}")
        self.feature_sizes = {m: int(size) for m, size in self.feature_sizes.items()}   # in the data's order
        wrong = config_errors(vars(self))
        if self.context_encoder not in CONTEXT_ENCODERS:
            wrong.append(("context_encoder", self.context_encoder, f"one of {', '.join(CONTEXT_ENCODERS)}"))
        if wrong:
            name, value, requirement = wrong[0]
            raise ValueError(f"{name}={value!r}: must be {requirement}")

    @property
    def modalities(self):
        return list(self.feature_sizes)


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


class ContextEncoder(nn.Module):
    """Context encoder (the release's GRUModel): a bidirectional GRU over the dialogue, dropout
    between its layers, then Linear back to the input size, ReLU and dropout. Runs on packed
    sequences, so no work is done on padding and padding does not reach the backward direction
    (maln/gru.py: cuDNN's layers on cuda, one autograd Function on cpu, torch's dropout between).

    Every context encoder of CONTEXT_ENCODERS has this interface: built as Encoder(size, config)
    for a modality's feature size, it holds `output_size`, and forward(features (B, N, size),
    lengths (B,) on cpu, speakers (B, N), utterance_mask (B, N)) -> (B, N, output_size); padding
    rows may hold anything (nothing downstream reads them)."""

    def __init__(self, size, config, extra_inputs=0):
        super().__init__()
        self.output_size = size                                                      # projected back, as released
        hidden = config.context_hidden or size
        self.gru = nn.GRU(size + extra_inputs, hidden, num_layers=config.gru_layers, bidirectional=True, batch_first=True,
                          dropout=config.context_dropout if config.gru_layers > 1 else 0.0)
        self.project = nn.Sequential(nn.Linear(2 * hidden, size), nn.ReLU(), nn.Dropout(config.context_dropout))

    def forward(self, features, lengths, speakers=None, utterance_mask=None):
        # features (B, N, D), lengths (B,) on cpu; the speakers and the mask are not read by this encoder
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        output = stacked_bidirectional_gru(self.gru, packed.data, packed.batch_sizes)  # (n_real, 2G)
        output = packed._replace(data=self.project(output))                         # (n_real, D)
        return pad_packed_sequence(output, batch_first=True, total_length=features.size(1))[0]  # (B, N, D)


class SpeakerContextEncoder(ContextEncoder):
    """The release's ContextEncoder told who speaks (not in the release; DialogueRNN's party mask):
    each turn's input carries a one-hot of its party's index in the dialogue (0 = the first to
    speak; parties from PARTY_SLOTS - 1 on share the last slot). output_size = size."""
    PARTY_SLOTS = 9                                                                 # MELD's dialogues have up to 9 parties

    def __init__(self, size, config):
        super().__init__(size, config, extra_inputs=self.PARTY_SLOTS)

    def forward(self, features, lengths, speakers, utterance_mask=None):
        # features (B, N, D), lengths (B,) on cpu, speakers (B, N)
        party = F.one_hot(speakers.clamp(0, self.PARTY_SLOTS - 1), self.PARTY_SLOTS).to(features.dtype)   # (B, N, P)
        return super().forward(torch.cat([features, party], -1), lengths)                            # (B, N, D)


def party_layout(speakers, utterance_mask):
    """Where each real utterance goes when a batch is laid out one row per (dialogue, party) present,
    that party's turns in order: -> row (n_real,), turn (n_real,) among its party's, and each row's
    length (G,), for the real utterances in the order of speakers[utterance_mask]."""
    B = speakers.size(0)
    n_parties = int(speakers.max()) + 1
    own = F.one_hot(speakers, n_parties) * utterance_mask.unsqueeze(-1)                       # (B, N, P)
    turn = ((own.cumsum(1) * own).sum(-1) - 1).clamp(min=0)                                  # (B, N) rank among own turns
    group = torch.arange(B, device=speakers.device).unsqueeze(1) * n_parties + speakers      # (B, N) one per (dialogue, party)
    counts = own.sum(1).reshape(-1)                                                          # (B*P,)
    present = counts.nonzero().squeeze(1)                                                    # (G,)
    compact = torch.full_like(counts, -1).scatter(0, present, torch.arange(len(present), device=counts.device))
    return compact[group[utterance_mask]], turn[utterance_mask], counts[present]


class PartyContextEncoder(nn.Module):
    """Context along each party's own turns (not in the release; DialogueRNN keeps such a party
    state): the release's ContextEncoder over the whole dialogue, beside a bidirectional GRU run
    over the turns of the utterance's own party only, projected back to the input size, ReLU and
    dropout. A speaker's offset and persisting emotion are estimated along that speaker's turns,
    which the whole-dialogue GRU sees interleaved with the others'. output_size = 2 x size."""
    party_mean = False                                                              # PartyMeanContextEncoder: True
    reads_every_modality = False                                                    # JointPartyContextEncoder: True

    def __init__(self, size, config):
        super().__init__()
        self.dialogue = ContextEncoder(size, config)
        hidden = config.context_hidden or size
        party_input = sum(config.feature_sizes.values()) if self.reads_every_modality else size * (2 if self.party_mean else 1)
        self.gru = nn.GRU(party_input, hidden, num_layers=1, bidirectional=True, batch_first=True)
        self.project = nn.Sequential(nn.Linear(2 * hidden, size), nn.ReLU(), nn.Dropout(config.context_dropout))
        self.output_size = 2 * size

    def forward(self, features, lengths, speakers, utterance_mask, every_modality=None):
        # features (B, N, D), lengths (B,) on cpu, speakers (B, N), utterance_mask (B, N);
        # every_modality (B, N, sum of D_m): given to an encoder that reads_every_modality, its party GRU's input
        B, N, D = features.shape
        turns = every_modality if self.reads_every_modality else features                     # what the party GRU reads
        row, turn, party_lengths = party_layout(speakers, utterance_mask)                      # (n_real,), (n_real,), (G,)
        real = utterance_mask
        parties = features.new_zeros(len(party_lengths), int(party_lengths.max()), turns.size(-1))  # (G, L, D)
        parties[row, turn] = turns[real]
        if self.party_mean:                                                                   # [turn ; party's mean]
            means = parties.sum(1) / party_lengths.unsqueeze(-1).to(features.dtype)           # (G, D)
            means = means.unsqueeze(1).expand_as(parties)                                     # (G, L, D)
            parties = torch.cat([parties, means], -1)                                         # (G, L, 2D)
        packed = pack_padded_sequence(parties, party_lengths.cpu(), batch_first=True, enforce_sorted=False)
        output = stacked_bidirectional_gru(self.gru, packed.data, packed.batch_sizes)           # (n_real, 2G)
        output = pad_packed_sequence(packed._replace(data=self.project(output)), batch_first=True)[0]  # (G, L, D)
        along_party = features.new_zeros(B, N, D)
        along_party[real] = output[row, turn]                                                  # (B, N, D)
        return torch.cat([self.dialogue(features, lengths), along_party], -1)                  # (B, N, 2D)


class PartyMeanContextEncoder(PartyContextEncoder):
    """The party GRU told its party's mean (not in the release): each turn's input along the party
    is [the turn ; the mean of that party's turns in the dialogue]. The mean holds the speaker's
    offset plus their average emotion; beside the turn, a model can weigh one against the other
    (a linear model given the same means loses on the demo and on MELD: docs/results.md)."""
    party_mean = True


class JointPartyContextEncoder(PartyContextEncoder):
    """The party GRU reading every modality (not in the release): along each party's turns, each
    turn's input is the concatenation of all modalities' (standardised) features, so one modality's
    party state sees the evidence the others hold of that speaker's emotion and offset, as
    DialogueRNN's party GRU reads the fused utterance. The dialogue GRU still reads its own modality.
    MALN.forward gives an encoder with reads_every_modality = True the keyword argument
    every_modality (B, N, sum of D_m). output_size = 2 x size."""
    reads_every_modality = True


CONTEXT_ENCODERS = {  # MALNConfig.context_encoder -> its class; add yours here (docs/extending.md)
    "gru": ContextEncoder,
    "party_gru": PartyContextEncoder,
    "party_mean_gru": PartyMeanContextEncoder,
    "party_joint_gru": JointPartyContextEncoder,
    "speaker_gru": SpeakerContextEncoder,
}


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

    def __init__(self, config, input_sizes):
        # input_sizes {m: size of the vector each utterance brings: its context output (+ its SCLM vector)}
        super().__init__()
        H = config.hidden_size
        self.config = config
        self.specific = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, H), nn.Dropout(config.specific_dropout), nn.Tanh())
                                       for m, d in input_sizes.items()})
        self.common = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, H), nn.Dropout(config.common_dropout), nn.Tanh())
                                     for m, d in input_sizes.items()})
        last_layer = lambda: nn.Sequential(nn.Linear(H, H), nn.Dropout(config.common_dropout), nn.Tanh())
        if config.common_last_layer == "shared":
            self.shared_common = last_layer()
        else:  # each modality its own: whether sharing it is what lets the common vectors meet
            self.separate_common = nn.ModuleDict({m: last_layer() for m in config.feature_sizes})
        self.discriminator = nn.Sequential(nn.Linear(H, config.discriminator_hidden), nn.Dropout(config.discriminator_dropout),
                                           nn.ReLU(), nn.Linear(config.discriminator_hidden, len(config.feature_sizes)))
        self.unimodal = nn.ModuleDict({m: nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(H, config.n_classes))
                                       for m in config.feature_sizes})

    def forward(self, inputs):
        # inputs {m: (B, N, input_sizes[m])}
        specific = {m: self.specific[m](x) for m, x in inputs.items()}                  # {m: (B, N, H)}
        common = {m: self.common_last(m)(self.common[m](x)) for m, x in inputs.items()}   # {m: (B, N, H)}
        unimodal = {m: F.log_softmax(self.unimodal[m](c), -1) for m, c in common.items()}  # {m: (B, N, C)}
        return specific, common, unimodal

    def common_last(self, m):
        return self.shared_common if self.config.common_last_layer == "shared" else self.separate_common[m]

    def adversarial_losses(self, specific, common, utterance_mask, reversal_factor=1.0):
        """Cross-entropy of the modality discriminator on specific and (reversed) common vectors,
        summed over the modalities; the target of modality m is its index in config.modalities.
        Beside them, detached, the discriminator's accuracy on each kind over every modality's real
        utterances (watched during training, not a term of the objective; chance is 1 / modalities).

        With adversarial_objective='confusion' the discriminator learns from the common vectors as
        they are (detached), and the common encoders instead minimise, times lambda, the cross-entropy
        of its prediction against the uniform distribution (ln M when it cannot tell): reversing the
        gradient rewards an encoder that makes the discriminator name the wrong modality, which keeps
        the modality as plain as before; confusion rewards only a prediction that cannot tell.
        reversal_factor: a schedule's factor on gradient_reversal (train_MALN.reversal_factor_at)."""
        real = utterance_mask.reshape(-1)
        losses = {}
        reversal = self.config.gradient_reversal * reversal_factor
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


class PartyChain(nn.Module):
    """Emotion transitions along each party's own turns (stage 3 switch, not in the release; a
    linear-chain model of the labels, as CESTa's CRF, run per party as DialogueRNN keeps a party
    state). The classifier's scores (B, N, C) are the emissions of a chain over each party's
    turns with a learned C x C transition matrix (each row a softmax); forward-backward gives each
    utterance's posterior marginal, returned as log-probabilities. Built, the transitions are
    uniform, where the chain changes nothing; fit() sets them to the training labels' own
    turn-to-turn frequencies along each party, and training goes on from there."""

    def __init__(self, n_classes):
        super().__init__()
        self.transition_logits = nn.Parameter(torch.zeros(n_classes, n_classes))   # (C, C) row: from, column: to

    @torch.no_grad()
    def fit(self, parties):
        # parties: one (T,) int64 label sequence per (dialogue, party) of the training split, -1 = unlabelled
        C = self.transition_logits.size(0)
        counts = torch.ones(C, C, dtype=torch.float64)                                 # add-one: no transition impossible
        for labels in parties:
            labels = labels[labels >= 0]
            counts.view(-1).index_add_(0, labels[:-1] * C + labels[1:], torch.ones(len(labels) - 1, dtype=torch.float64))
        self.transition_logits.copy_((counts / counts.sum(1, keepdim=True)).log())

    def forward(self, scores, speakers, utterance_mask):
        # scores (B, N, C) any per-utterance log-potentials; speakers (B, N); utterance_mask (B, N)
        B, N, C = scores.shape
        row, turn, party_lengths = party_layout(speakers, utterance_mask)                      # (n_real,), (n_real,), (G,)
        real = utterance_mask
        emissions = scores.new_zeros(len(party_lengths), int(party_lengths.max()), C)          # (G, L, C) 0 = log 1 after the end
        emissions[row, turn] = scores[real]
        log_transition = F.log_softmax(self.transition_logits, -1)                             # (C, C) rows sum to 1
        L = emissions.size(1)
        alpha = [emissions[:, 0]]                                                              # L x (G, C)
        for t in range(1, L):
            alpha.append(emissions[:, t] + torch.logsumexp(alpha[-1].unsqueeze(-1) + log_transition, 1))
        beta = [torch.zeros_like(emissions[:, 0])]                                             # past a party's end every
        for t in range(L - 2, -1, -1):                                                         # step multiplies by 1
            beta.append(torch.logsumexp(log_transition + (emissions[:, t + 1] + beta[-1]).unsqueeze(1), -1))
        joint = torch.stack(alpha, 1) + torch.stack(beta[::-1], 1)                             # (G, L, C)
        marginals = F.log_softmax(joint, -1)                                                   # (G, L, C)
        output = scores.new_zeros(B, N, C)
        output[real] = marginals[row, turn]
        return output                                                                          # (B, N, C)


class MALN(nn.Module):
    """The whole network, as the module docstring draws it: [input standardisation] -> context
    encoder beside SCLM, concatenated -> AMDM -> cross-modal attention -> classifier (paper,
    stages 1-3). forward() returns log-probabilities (fused and unimodal), named losses (when
    labels are given) and the fused, common and specific vectors."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        sizes = config.feature_sizes
        self.standardizer = nn.ModuleDict({m: Standardizer(d) for m, d in sizes.items()}) if config.standardize else None
        self.sclm = nn.ModuleDict({m: SCLM(d, config) for m, d in sizes.items()}) if config.sclm_mode != "off" else None
        self.context = nn.ModuleDict({m: CONTEXT_ENCODERS[config.context_encoder](d, config) for m, d in sizes.items()})
        concatenated = self.sclm is not None and config.sclm_fusion == "concat"
        if self.sclm is not None and not concatenated:  # SCLM acts on the context vector: W maps s to its size
            self.fusion = nn.ModuleDict({m: nn.Linear(config.speaker_size, self.context[m].output_size) for m in sizes})
        self.amdm = AMDM(config, {m: self.context[m].output_size + (config.speaker_size if concatenated else 0)
                                  + (d if config.utterance_skip else 0) for m, d in sizes.items()})
        H = config.hidden_size
        self.cross = CrossModalAttention(config) if len(sizes) > 1 else None
        self.classifier = nn.Sequential(nn.Linear(self.fused_size(), H), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(H, config.n_classes))
        self.chain = PartyChain(config.n_classes) if config.party_chain else None

    def fused_size(self):
        """[cross-modal output (2H) ; commonality (H)]; with one modality the commonality alone, or
        beside the specific vector when cross_input is 'specific'."""
        H = self.config.hidden_size
        if self.cross is not None:
            return 3 * H
        return 2 * H if self.config.cross_input == "specific" else H

    def forward(self, batch, class_weights=None, reversal_factor=1.0):
        """batch: the dict dataloader.collate makes (described here, and only here):
            features        {m: (B, N, D_m)} float, one entry per modality of config.feature_sizes
            speakers        (B, N) int64, each utterance's party index in its dialogue (0, 1, ...)
            utterance_mask  (B, N) bool, True at real utterances, False at padding
            lengths         (B,) int64 on the cpu, the utterances of each dialogue
            labels          (B, N) int64 class index, -1 where unlabelled or padding; the losses are
                            computed when the batch holds labels (absent or None: no losses)
        class_weights: (C,) weights of the classification losses, or None.
        reversal_factor: a schedule's factor on the gradient reversal's lambda (1: the release's)."""
        features, speakers, utterance_mask, lengths = (batch[k] for k in ("features", "speakers", "utterance_mask", "lengths"))
        labels = batch.get("labels")
        inputs = {}
        n_parties = int(speakers.max()) + 1 if self.sclm is not None else 0
        prepared, every = {}, {}  # a context encoder that reads every modality: all of them prepared first, once
        if getattr(CONTEXT_ENCODERS[self.config.context_encoder], "reads_every_modality", False):
            prepared = {m: self.prepared(m, features[m]) for m in self.config.modalities}
            every = {"every_modality": torch.cat(list(prepared.values()), -1)}                     # (B, N, sum D_m)
        for m in self.config.modalities:
            features_m = prepared[m] if every else self.prepared(m, features[m])
            x = self.context[m](features_m, lengths, speakers, utterance_mask, **every)               # (B, N, C_m)
            if self.sclm is not None:
                x = self.speaker_fused(m, x, self.sclm[m](features_m, speakers, n_parties, utterance_mask))
            if self.config.utterance_skip:
                x = torch.cat([x, features_m], -1)                                                  # (B, N, C_m + D_m)
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
        if self.chain is not None:
            log_probs = self.chain(log_probs, speakers, utterance_mask)                             # (B, N, C) marginals
        output = {"log_probs": log_probs, "unimodal": unimodal, "fused": fused, "common": common, "specific": specific}
        if labels is not None:
            output["losses"] = self.losses(log_probs, unimodal, specific, common, utterance_mask, labels, class_weights,
                                           reversal_factor)
        return output

    def prepared(self, m, features_m):
        """One modality's features as the context encoders and SCLM read them: [standardised, input dropout]."""
        features_m = self.standardizer[m](features_m) if self.standardizer is not None else features_m
        return F.dropout(features_m, self.config.input_dropout, self.training)                     # (B, N, D_m)

    def speaker_fused(self, m, context, speaker):
        """context (B, N, C_m) and SCLM's speaker vector (B, N, speaker_size) as config.sclm_fusion joins them."""
        if self.config.sclm_fusion == "concat":
            return torch.cat([context, speaker], -1)                                               # (B, N, C_m + speaker_size)
        if self.config.sclm_fusion == "gate":
            return context * 2 * torch.sigmoid(self.fusion[m](speaker))                              # (B, N, C_m)
        return context + self.fusion[m](speaker)                                                    # (B, N, C_m)

    def losses(self, log_probs, unimodal, specific, common, utterance_mask, labels, class_weights, reversal_factor=1.0):
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
            losses.update(self.amdm.adversarial_losses(specific, common, utterance_mask, reversal_factor))
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

    def fit_chain(self, dialogues):
        """Start the party chain's transitions at these (training) dialogues' turn-to-turn label frequencies."""
        if self.chain is None:
            raise ValueError("this model was built with party_chain=False: it has no transitions to fit")
        self.chain.fit([d.labels[d.speakers == p] for d in dialogues for p in d.speakers.unique()])

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
        checkpoint's tensors (sized on the meta device first: model_args may claim a model far larger
        than the file holds)."""
        return fitted_config(checkpoint, path, MALNConfig, cls)

    @classmethod
    def from_release(cls, source, max_positions=128, **settings):
        """A ready model in eval mode that computes what the authors' release computes, from the
        state dict of the release's MALN: a dict, or the path of a torch.save file holding one,
        bare or as {'model_state_dict': ...} (what the release's train script saves). Feature
        sizes, the class count and the layer sizes are read from the tensors; position tables
        are cut to `max_positions` rows; the release's unused modules are ignored. `settings`
        change other MALNConfig fields (the heads, which the tensors do not tell, or dropouts)."""
        name = source if isinstance(source, (str, os.PathLike)) else "the release state dict"
        state = release_state_dict(load_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source, name)
        try:
            config = MALNConfig(**{**release_config_args(state, max_positions), **settings})
        except (ValueError, TypeError) as error:
            raise ValueError(f"{name}: the sizes of its tensors give no model of this repository ({error})") from None
        skeleton = on_meta_device(cls, config)  # the sizes the tensors claim are compared before the model is allocated
        mapped = release_state(skeleton, state, config, name)
        check_state_shapes(skeleton, mapped, name)
        model = cls(config)
        load_model_state(model, mapped, name)
        return model.eval()

    def model_args(self):
        return asdict(self.config)


