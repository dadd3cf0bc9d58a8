import pytest
from torch.utils.flop_counter import FlopCounterMode

import train_MALN
from dataloader import collate
from benchmarks import speed

TINY = {**speed.OPTIONS, "epochs": 1, "text_size": 16, "audio_size": 8, "visual_size": 12, "batch_size": 4,
        "train_dialogues": 6, "train_utterances": 90, "test_dialogues": 2, "test_utterances": 30}


def test_inputs_have_the_asked_shape():
    feature_set = speed.make_feature_set(speed.OPTIONS)
    lengths = [len(d) for d in feature_set.splits["train"]]
    assert len(lengths) == 120 and sum(lengths) == 5810 and min(lengths) >= 8 and max(lengths) <= 110
    assert sum(len(d) for d in feature_set.splits["test"]) == 1623
    assert feature_set.feature_sizes == {"t": 1024, "a": 100, "v": 512}
    assert all(set(d.speakers.tolist()) <= {0, 1} for d in feature_set.splits["train"])


def test_analytic_flops_match_torch_flop_counter_on_one_dialogue():
    feature_set = speed.make_feature_set({**TINY, "text_size": 64, "train_utterances": 240})
    model = train_MALN.build_model(feature_set, train_MALN.HYPERPARAMETERS).eval()
    dialogue = feature_set.splits["train"][0]
    batch = collate([dialogue])
    with FlopCounterMode(display=False) as counter:
        model(batch)
    analytic = speed.dialogue_flops(model.config, len(dialogue), int(dialogue.speakers.max()) + 1)
    assert abs(analytic / counter.get_total_flops() - 1) < 0.05


@pytest.mark.slow
def test_benchmark_runs_and_reports_both_phases():
    rows, description = speed.benchmark(TINY)
    assert [row["phase"] for row in rows] == ["inference", "training"]
    assert all(row["utterances/s"] > 0 and 0 < row["utilisation"] for row in rows)
    assert "torch" in description and "|" in speed.markdown(rows)
