"""index.html's curated headlines: a few numbers with units and meanings, guarded values said as
"too few samples", tables of records reachable, every figure captioned."""

import json
import math

from support import headlines
from support.headlines import caption, flatten, headline_rows
from support.run_index import write_index
from support.runs import create_run_dir


def test_patterns_name_each_set_and_guarded_values_say_too_few_samples():
    metrics = {"ddpm-dpmsolver++-25": {"fd": 6.84, "turing_auroc": 0.98, "kid_mean": 0.1},
               "t2i-lora": {"fd": 12.0, "turing_auroc": None, "cond_auroc_mean": math.nan},
               "reference_encoder_val_auroc": {"Cardiomegaly": 0.8}}
    rows, more = headline_rows("06_evaluation", metrics)
    assert ("ddpm-dpmsolver++-25: distance to real", "6.84", "FD") == rows[0][:3]
    by_label = {r[0]: r[1] for r in rows}
    assert by_label["t2i-lora: told from real"] == "too few samples"
    assert by_label["t2i-lora: requested findings found"] == "too few samples"
    assert not any("kid" in r[0] or "Cardiomegaly" in r[0] for r in rows) and more == 0
    assert all(r[3] for r in rows)                                     # every row says how to read it


def test_tables_of_records_are_keyed_by_their_identity_and_rows_are_capped():
    records = [{"direction": f"D{i}", "measure": "fd", "difference": 0.5 - i} for i in range(20)]
    keys = dict(flatten({"multi_minus_single": records}))
    assert keys["multi_minus_single.D3|fd.difference"] == -2.5
    rows, more = headline_rows("03_xgem", {"multi_minus_single": records})
    assert len(rows) == headlines.MAX_ROWS and more == 20 - headlines.MAX_ROWS
    assert rows[0][:3] == ("Multi-Prompt minus single-prompt, D0", "0.5", "FD")


def test_captions():
    assert caption("02_samples") == "DDPM EMA samples"
    assert caption("06_privacy_ddpm-dpmsolver++-25").endswith(": ddpm-dpmsolver++-25")
    assert caption("07_new_figure") == "new figure"


def test_index_shows_curated_rows_links_and_captions(tmp_path):
    paths = create_run_dir(tmp_path, "r")
    (paths.metrics / "02_ddpm.json").write_text(json.dumps(
        {"updates": 150, "pixel_fd_trained": 4.9, "pixel_fd_untrained": 28.6, "final_loss": 0.07,
         "pixel_fd_by_update": {"150": 5.1, "300": 4.2}, "pipeline": "/abs/path"}))
    (paths.metrics / "06_evaluation_table.csv").write_text("a\n1\n")
    (paths.metrics / "06_evaluation.json").write_text(json.dumps({"x": {"fd": 1.0}}))
    (paths.figures / "02_samples.png").write_bytes(b"png")
    manifest = {"run_id": "r", "profile": "test", "created": "now", "notebooks": [], "git": {}}
    page = write_index(paths, manifest).read_text()
    assert "trained model vs held-out images" in page and "pixel FD" in page and "EMA samples at update 300" in page
    assert "final_loss" not in page and "/abs/path" not in page              # curated, not a dump
    assert 'href="metrics/02_ddpm.json"' in page and 'href="metrics/06_evaluation_table.csv"' in page
    assert "<figcaption>02 · DDPM EMA samples</figcaption>" in page
