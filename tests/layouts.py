"""Small feature files in the exact layouts of the public releases, for the reader tests."""

import pickle

import numpy as np


def _dialogues(rng, n_dialogues, n_classes, multiparty):
    ids, lengths = [f"dia{i}" if not multiparty else i for i in range(n_dialogues)], rng.integers(3, 9, n_dialogues)
    speakers, labels = {}, {}
    for i, n in zip(ids, lengths):
        if multiparty:
            speakers[i] = [list(np.eye(9)[p]) for p in rng.integers(0, 9, n)]   # one-hot over 9 parties
        else:
            speakers[i] = [str(s) for s in rng.choice(["M", "F"], n)]
        labels[i] = [int(y) for y in rng.integers(0, n_classes, n)]
    return ids, lengths, speakers, labels


def _stream(rng, ids, lengths, size, as_list):
    if as_list:  # DialogueRNN stores a list of per-utterance vectors
        return {i: [rng.normal(size=size).astype(np.float32) for _ in range(n)] for i, n in zip(ids, lengths)}
    return {i: rng.normal(size=(n, size)).astype(np.float32) for i, n in zip(ids, lengths)}


def _sentences(ids, lengths):
    return {i: [f"utterance {j}" for j in range(n)] for i, n in zip(ids, lengths)}


def dialoguernn_iemocap(path, seed=0, n_dialogues=12, sizes=(100, 100, 512)):
    rng = np.random.default_rng(seed)
    ids, lengths, speakers, labels = _dialogues(rng, n_dialogues, 6, multiparty=False)
    text, audio, visual = (_stream(rng, ids, lengths, s, as_list=True) for s in sizes)
    data = ({i: [f"{i}_{j}" for j in range(n)] for i, n in zip(ids, lengths)}, speakers, labels, text, audio, visual,
            _sentences(ids, lengths), ids[:9], ids[9:])
    _write(path, data)
    return data


def dialoguernn_meld(path, seed=0, n_dialogues=12, sizes=(600, 300)):
    rng = np.random.default_rng(seed)
    ids, lengths, speakers, labels = _dialogues(rng, n_dialogues, 7, multiparty=True)
    text, audio = (_stream(rng, ids, lengths, s, as_list=True) for s in sizes)
    sentiment = {i: [0] * n for i, n in zip(ids, lengths)}
    data = ({i: list(range(n)) for i, n in zip(ids, lengths)}, speakers, labels, text, audio, _sentences(ids, lengths),
            ids[:9], ids[9:], sentiment)
    _write(path, data)
    return data


def mmgcn_meld(path, seed=0, n_dialogues=12, sizes=(600, 300, 342)):
    rng = np.random.default_rng(seed)
    ids, lengths, speakers, labels = _dialogues(rng, n_dialogues, 7, multiparty=True)
    text, audio, visual = (_stream(rng, ids, lengths, s, as_list=True) for s in sizes)
    sentiment = {i: [0] * n for i, n in zip(ids, lengths)}
    data = ({i: list(range(n)) for i, n in zip(ids, lengths)}, speakers, labels, text, audio, visual,
            _sentences(ids, lengths), ids[:9], ids[9:], sentiment)
    _write(path, data)
    return data


def cosmic_iemocap(path, seed=0, n_dialogues=12, size=1024, ids_from=None):
    rng = np.random.default_rng(seed)
    ids, lengths, speakers, labels = _dialogues(rng, n_dialogues, 6, multiparty=False)
    if ids_from is not None:  # the same dialogues as a DialogueRNN file, for the audio/visual join
        ids, speakers, labels = list(ids_from[1]), ids_from[1], ids_from[2]
        lengths = [len(speakers[i]) for i in ids]
    r = [_stream(rng, ids, lengths, size, as_list=False) for _ in range(4)]
    data = (speakers, labels, *r, _sentences(ids, lengths), ids[:8], ids[9:], ids[8:9])
    _write(path, data)
    return data


def cosmic_meld(path, seed=0, n_dialogues=12, size=1024):
    rng = np.random.default_rng(seed)
    ids, lengths, speakers, labels = _dialogues(rng, n_dialogues, 7, multiparty=True)
    sentiment = {i: [0] * n for i, n in zip(ids, lengths)}
    r = [_stream(rng, ids, lengths, size, as_list=False) for _ in range(4)]
    data = (speakers, labels, sentiment, *r, _sentences(ids, lengths), ids[:8], ids[9:], ids[8:9])
    _write(path, data)
    return data


def _write(path, data):
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
