import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import results  # noqa: E402


def test_table_gathers_each_rows_summary_as_mean_and_std(tmp_path):
    for row, values in (("full model", [60.0, 62.0]), ("without SCLM", [50.0, 51.0, 55.0])):
        directory = results.run_dir(str(tmp_path), "iemocap_text", row)
        os.makedirs(directory)
        summary = {"seeds": list(range(len(values)))}
        for key in results.COLUMNS:
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            summary[key] = {"mean": mean, "std": std, "values": values}
        json.dump(summary, open(os.path.join(directory, "summary.json"), "w"))
    frame = results.table("iemocap_text", str(tmp_path))
    assert frame["setting"].tolist() == ["full model", "without SCLM"]      # suite order, missing rows left out
    assert frame["seeds"].tolist() == [2, 3]
    assert frame["test wF1"].tolist() == ["61.00 ± 1.41", "52.00 ± 2.65"]
    assert results.markdown(frame).splitlines()[2].startswith("| full model | 2 | 61.00 ± 1.41 |")


def test_decomposition_table_gives_each_rows_probe_figures_over_seeds(tmp_path):
    figures = {key: 0.5 for key in results.PROBE_COLUMNS}
    for row, seeds in (("full model", {1: 0.4, 2: 0.6}), ("without orthogonality", {1: 0.9})):
        for seed, value in seeds.items():
            directory = os.path.join(results.run_dir(str(tmp_path), "decomposition", row), f"seed{seed}")
            os.makedirs(directory)
            decomposition = {**figures, "modality_from_common_accuracy": value}
            json.dump({"decomposition": decomposition}, open(os.path.join(directory, "metrics.json"), "w"))
    frame = results.decomposition_table("decomposition", str(tmp_path))
    assert frame["setting"].tolist() == ["full model", "without orthogonality"]
    assert frame["seeds"].tolist() == [2, 1]
    assert frame["modality from common"].tolist() == ["0.50 ± 0.14", "0.90"]
    assert frame["emotion wF1 from specific"].tolist() == ["0.50 ± 0.00", "0.50"]
    assert results.mean_std([None, None]) == "n/a"
