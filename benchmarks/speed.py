"""
Speed of MALN's real training step and inference at IEMOCAP's shape and the released sizes.

    python -m benchmarks.speed                          # cpu (or cuda when present), 3 epochs each
    python -m benchmarks.speed --device=cuda --amp=True # bfloat16 autocast on cuda
    python -m benchmarks.speed --bucket_batches=True --threads=2 --epochs=5

Inputs have IEMOCAP's shape: 120 training dialogues (5,810 utterances) and 31 test dialogues
(1,623 utterances) whose seeded lengths follow IEMOCAP's (8 to 110, mean 48, sd 17), two
speakers 'M'/'F' (0/1) alternating irregularly, 6 classes, random features of the released
sizes (text 1024, audio 100, visual 512). The model is train_MALN's, with its defaults, and
each epoch runs dataloader.make_batches + train_MALN.train_epoch (training) or
train_MALN.evaluate over the 120 dialogues (inference), as train_MALN.run does.

Reported per phase: utterances per second and seconds per epoch (median over epochs, the first
epoch of each phase being a warm-up that is not counted), the process's CPU seconds per epoch
(all threads; on a shared machine it moves less with other jobs' load than wall time), the peak memory (cuda:
max_memory_allocated; cpu: growth of the process's peak resident set, getrusage ru_maxrss,
over the phase, measured inference first), and utilisation: the model's analytic FLOPs
on real utterances per second (see dialogue_flops) divided by the FLOP/s of a dense square
matmul (1024 on cpu, 8192 on cuda, where a 1024 matmul leaves most of a large GPU idle)
measured in the same run on the same device, in fp32, or in bf16 with --amp=True. The last
column is the ceiling that rate sets: utterances per second if every FLOP ran as fast as that
matmul. On cuda the description names the card and the fp32 precision of cuBLAS and of
cuDNN's GRU (PyTorch lets cuDNN's RNNs use TF32 for fp32 by default, the matmuls not).
"""

import resource
import statistics
import sys
import time

import numpy as np
import torch

import train_MALN
from training.configurator import parse_settings
from dataloader import CLASS_NAMES, Dialogue, FeatureSet, make_batches
from utils import autocast, resolve_device, set_threads

# ----------------------------------------------------------------------------- options
epochs = 3                  # timed epochs per phase (after one warm-up epoch)
device = "auto"             # 'auto' (cuda when available), 'cpu', 'cuda'
amp = False                 # bfloat16 autocast on cuda
threads = 0                 # torch.set_num_threads; 0 = torch's default
batch_size = 32             # dialogues per batch (released)
bucket_batches = False      # train_MALN's length-bucketed training batches
text_size = 1024            # released feature sizes
audio_size = 100
visual_size = 512
train_utterances = 5810     # IEMOCAP: 120 training dialogues, 5,810 utterances
train_dialogues = 120
test_utterances = 1623      # IEMOCAP: 31 test dialogues, 1,623 utterances
test_dialogues = 31
seed = 0                    # seed of the generated inputs
matmul_size = 0             # side of the reference dense matmul; 0 = 1024 on cpu, 8192 on cuda
# -----------------------------------------------------------------------------
OPTIONS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def dialogue_lengths(rng, n_dialogues, n_utterances, low=8, high=110):
    """Seeded lengths like IEMOCAP's (normal, mean 48, sd 17, clipped), adjusted to sum to n_utterances."""
    lengths = np.clip(np.rint(rng.normal(48.4, 16.6, n_dialogues)), low, high).astype(int)
    while lengths.sum() != n_utterances:
        step = 1 if lengths.sum() < n_utterances else -1
        i = rng.integers(n_dialogues)
        if low <= lengths[i] + step <= high:
            lengths[i] += step
    return lengths


def make_dialogues(rng, lengths, sizes, n_classes, prefix):
    """Random features; speakers 0/1 ('M'/'F') switching at 60% of turns; random labels."""
    dialogues = []
    for index, n in enumerate(lengths):
        switches = rng.random(n) < 0.6
        switches[0] = rng.random() < 0.5
        speakers = np.cumsum(switches) % 2
        features = {m: torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32)) for m, d in sizes.items()}
        dialogues.append(Dialogue(f"{prefix}{index}", features, torch.from_numpy(speakers.astype(np.int64)),
                                  torch.from_numpy(rng.integers(0, n_classes, n))))
    return dialogues


def make_feature_set(options):
    rng = np.random.default_rng(options["seed"])
    sizes = {"t": options["text_size"], "a": options["audio_size"], "v": options["visual_size"]}
    class_names = CLASS_NAMES["IEMOCAP"]
    splits = {"train": make_dialogues(rng, dialogue_lengths(rng, options["train_dialogues"], options["train_utterances"]),
                                      sizes, len(class_names), "train"),
              "valid": [],
              "test": make_dialogues(rng, dialogue_lengths(rng, options["test_dialogues"], options["test_utterances"]),
                                     sizes, len(class_names), "test")}
    return FeatureSet("synthetic, IEMOCAP's shape", "benchmark", class_names, splits)


# ----------------------------------------------------------------------------- FLOPs

def linear(n_rows, n_in, n_out):
    return 2 * n_rows * n_in * n_out                      # a multiply-add is 2 FLOPs


def attention_flops(n_queries, n_keys, size, feedforward):
    """Attention for n_queries rows over n_keys real keys: query, key and value projections (the
    release's attention has no output projection), scores and weighted sum (biases, softmax and
    norms ignored), then a feed-forward of these widths (size -> ... -> size), if any."""
    projections = linear(n_queries, size, size) + linear(n_keys, size, 2 * size)
    scores = 2 * linear(n_queries, size, n_keys)          # Q K^T and A V
    widths = [size, *feedforward]
    return projections + scores + sum(linear(n_queries, a, b) for a, b in zip(widths, widths[1:]))


def dialogue_flops(config, n, n_parties):
    """Forward FLOPs of MALN on one dialogue of n real utterances (matmuls only, training losses
    included; x3 for a training step: forward + backward's two matmuls per forward matmul).

    Per modality of size D, GRU hidden G, L layers: each GRU layer and direction an input
    matmul (I x 3G) and a recurrent matmul (G x 3G) per utterance, I = D then 2G; the projection
    2G -> D. SCLM ('speaker'): per party, its [CLS] over its own utterances: key/value of the
    utterances, query/output/feed-forward of the [CLS] row (the last layer computes only those
    rows; earlier layers every row); then the D -> speaker_size projection. AMDM: specific and
    common encoders, the shared layer, the unimodal classifiers, the modality discriminator on
    specific and common vectors, the orthogonality Gram products (2 per difference loss).
    Cross-modal attention: projection of the others, two H-wide attentions over the n real keys,
    the 2H-wide encoder layer. Classifier."""
    H, S, C, M = config.hidden_size, config.speaker_size, config.n_classes, len(config.feature_sizes)
    total = 0
    for D in config.feature_sizes.values():
        G = config.context_hidden or D
        for layer in range(config.gru_layers):
            total += 2 * (linear(n, D if layer == 0 else 2 * G, 3 * G) + linear(n, G, 3 * G))
        total += linear(n, 2 * G, D)
        if config.sclm_mode != "off":
            groups = [n // n_parties] * n_parties if config.sclm_mode == "speaker" else [n, n]   # utterances per [CLS]
            for group in groups:
                total += (config.sclm_layers - 1) * attention_flops(group + 1, group + 1, D, (config.sclm_feedforward, D))
                total += attention_flops(1, group + 1, D, (config.sclm_feedforward, D))
            total += linear(n, D, S)
        extra = S if config.sclm_mode != "off" else 0
        total += 2 * linear(n, D + extra, H) + linear(n, H, H) + linear(n, H, H) + linear(n, H, C)
        if M > 1 and config.adversarial:
            total += 2 * (linear(n, H, config.discriminator_hidden) + linear(n, config.discriminator_hidden, M))
    if config.orthogonality:
        total += 2 * (M * (M - 1) // 2 + M) * linear(H, n, H)
    if M > 1:
        total += linear(n, H * (M - 1), H)
        if config.cross_attention:
            total += 2 * attention_flops(n, n, H, ()) + attention_flops(n, n, 2 * H, (2 * H,))
    fused = 3 * H if M > 1 else (2 * H if config.cross_input == "specific" else H)
    return total + linear(n, fused, H) + linear(n, H, C)


def split_flops(config, dialogues):
    return sum(dialogue_flops(config, len(d), int(d.speakers.max()) + 1) for d in dialogues)


# ----------------------------------------------------------------------------- measurements

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device, dtype, size, seconds=2.0):
    """FLOP/s of a loop of dense size x size matmuls (best of 5 rounds)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    best = 0.0
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            for _ in range(4):
                a @ b
            synchronize(device)
            count += 4
        best = max(best, 2 * size ** 3 * count / (time.perf_counter() - start))
    return best


def peak_memory(device):
    """Peak bytes so far: cuda allocator peak, or the process's peak resident set (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_epochs(run_epoch, n_epochs, device):
    """Wall-clock and process CPU seconds of each of n_epochs epochs after one untimed warm-up epoch."""
    run_epoch()
    seconds, cpu_seconds = [], []
    for _ in range(n_epochs):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        run_epoch()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return seconds, cpu_seconds


def measure(name, run_epoch, options, device, n_utterances, flops, matmul_rate):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_memory(device) if device.type == "cpu" else 0
    seconds, cpu_seconds = timed_epochs(run_epoch, options["epochs"], device)
    epoch = statistics.median(seconds)
    return {"phase": name, "utterances/s": n_utterances / epoch, "s/epoch": epoch,
            "epochs (s)": " ".join(f"{s:.2f}" for s in seconds), "process CPU s/epoch": statistics.median(cpu_seconds),
            "peak memory (MiB)": (peak_memory(device) - before) / 2 ** 20,
            "GFLOP/utterance": flops / n_utterances / 1e9, "utilisation": flops / epoch / matmul_rate,
            "utterances/s at the matmul rate": matmul_rate * n_utterances / flops}


def markdown(rows):
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.0f}" if isinstance(v, float) else str(v)
                 for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def benchmark(options):
    """Measure inference then training; returns the table rows and a description of the run."""
    set_threads(options["threads"])
    device = resolve_device(options["device"])
    use_amp = options["amp"] and device.type == "cuda"
    matmul_size = options["matmul_size"] or (8192 if device.type == "cuda" else 1024)
    matmul_rate = matmul_flops_per_second(device, torch.bfloat16 if use_amp else torch.float32, matmul_size)
    feature_set = make_feature_set(options)
    torch.manual_seed(options["seed"])
    model = train_MALN.build_model(feature_set, train_MALN.HYPERPARAMETERS).to(device)
    optimizer = train_MALN.make_optimizer(model, train_MALN.HYPERPARAMETERS)
    train = feature_set.splits["train"]
    n_utterances, flops = sum(len(d) for d in train), split_flops(model.config, train)
    generator = torch.Generator().manual_seed(options["seed"])
    inference_batches = make_batches(train, options["batch_size"])

    def inference_epoch():
        train_MALN.evaluate(model, inference_batches, device, use_amp, None)

    def training_epoch():
        batches = make_batches(train, options["batch_size"], generator, options["bucket_batches"])
        train_MALN.train_epoch(model, optimizer, batches, device, use_amp, None)

    rows = [measure("inference", inference_epoch, options, device, n_utterances, flops, matmul_rate),
            measure("training", training_epoch, options, device, n_utterances, 3 * flops, matmul_rate)]
    description = (f"{device_name(device)}{' bf16 autocast' if use_amp else ''}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}; {model.n_parameters() / 1e6:.1f}M parameters; {len(train)} dialogues, "
                   f"{n_utterances} utterances, batch {options['batch_size']}, bucket_batches={options['bucket_batches']}; "
                   f"dense {matmul_size}x{matmul_size} {'bf16' if use_amp else 'fp32'} matmul {matmul_rate / 1e9:.0f} GFLOP/s")
    return rows, description


def device_name(device):
    """The device; on cuda also the card, its memory, the fp32 precision of matmuls and of cuDNN's
    GRU, and the dtype that GRU computes in under train_MALN's bf16 autocast."""
    if device.type != "cuda":
        return str(device)
    properties = torch.cuda.get_device_properties(device)
    gru = torch.nn.GRU(8, 8, device=device)
    with autocast(device, True):
        autocast_dtype = gru(torch.zeros(2, 1, 8, device=device))[0].dtype
    return (f"{device} ({properties.name}, {properties.total_memory / 2 ** 30:.0f} GiB; fp32 precision: matmul "
            f"{torch.get_float32_matmul_precision()}, cuDNN GRU {torch.backends.cudnn.rnn.fp32_precision}; "
            f"cuDNN GRU under bf16 autocast: {autocast_dtype})")


def main(argv):
    options = parse_settings(argv, OPTIONS)
    rows, description = benchmark(options)
    print(description)
    print(markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
