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
