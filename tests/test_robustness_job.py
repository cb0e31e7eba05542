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
    chosen = max(report["purification_sweep"], key=lambda r: (r["accuracy"], r["clean"],
                                                              -r["network_calls"]))
    assert (purified["t_star"], purified["steps"]) == (chosen["t_star"], chosen["steps"])
    assert purified["network_calls_per_image"] == purified["steps"]  # one U-Net call a step
    out = storage / "eval" / "robustness"
    assert json.loads((out / "robustness.json").read_text())["models"].keys() == {"cnn", "purified"}
    assert (out / "robustness_mnist.png").stat().st_size > 1000
    assert "| cnn | 16 |" in (out / "robustness.md").read_text()
