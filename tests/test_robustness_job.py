"""jobs/evaluate_robustness.py end to end on tiny models: the table, the JSON and the plot."""

import json

from jobs import evaluate_robustness

from .conftest import make_storage, needs_data


@needs_data
def test_the_robustness_report_covers_every_model_and_attack(tmp_path):
    storage = make_storage(tmp_path)  # a tiny DDPM (T = 20) in the registry
    report = evaluate_robustness.main(["--smoke-test", "--storage-path", str(storage), "--models",
                                       "cnn", "purified", "--sweep-t-star", "5", "10",
                                       "--sweep-steps", "1", "2"])
    cnn = report["models"]["cnn"]["attacks"]
    assert list(cnn) == ["pgd", "apgd-ce", "apgd-t", "square", "autoattack"]
    assert cnn["autoattack"][0.3]["accuracy"] <= cnn["pgd"][0.3]["accuracy"]
    purified = report["models"]["purified"]
    (adaptive,) = purified["attacks"].values()
    point = adaptive[0.3]
    assert point["accuracy"] == min(point["full_gradient"], point["bpda"])
    swept = [(r["t_star"], r["steps"]) for r in report["purification_sweep"]]
    assert swept == [(5, 1), (5, 2), (10, 1), (10, 2)]
    chosen = evaluate_robustness.chosen_setting(report["purification_sweep"])
    assert (purified["t_star"], purified["steps"]) == (chosen["t_star"], chosen["steps"])
    assert purified["network_calls_per_image"] == purified["steps"]  # one U-Net call a step
    out = storage / "eval" / "robustness"
    assert json.loads((out / "robustness.json").read_text())["models"].keys() == {"cnn", "purified"}
    assert (out / "robustness_mnist.png").stat().st_size > 1000
    assert "| cnn | 16 |" in (out / "robustness.md").read_text()


def test_the_sweep_never_chooses_a_purifier_that_destroys_the_clean_images():
    rows = [{"t_star": 100, "steps": 5, "clean": 1.0, "accuracy": 0.23, "network_calls": 5},
            {"t_star": 300, "steps": 2, "clean": 0.98, "accuracy": 0.20, "network_calls": 2},
            {"t_star": 500, "steps": 5, "clean": 0.52, "accuracy": 0.30, "network_calls": 5}]
    assert evaluate_robustness.chosen_setting(rows)["t_star"] == 100
    rows[1]["accuracy"] = 0.23  # a tie on robustness: the more accurate, then the cheaper
    assert evaluate_robustness.chosen_setting(rows)["t_star"] == 100
    rows[1]["clean"] = 1.0
    assert evaluate_robustness.chosen_setting(rows)["steps"] == 2


@needs_data
def test_reports_of_separate_runs_merge_into_one_table_and_figure(tmp_path):
    storage = make_storage(tmp_path)
    common = ["--smoke-test", "--storage-path", str(storage)]
    evaluate_robustness.main([*common, "--models", "cnn", "--name", "a", "--attacks", "pgd"])
    evaluate_robustness.main([*common, "--models", "purified", "--name", "b"])
    reports = [str(storage / "eval" / n / "robustness.json") for n in ("a", "b")]
    merged = evaluate_robustness.main([*common, "--name", "both", "--from-reports", *reports])
    assert set(merged["models"]) == {"cnn", "purified"}
    table = (storage / "eval" / "both" / "robustness.md").read_text()
    assert "| cnn | 16 |" in table and "| purified | 4 |" in table
