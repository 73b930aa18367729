"""The benchmark suite: the interleaved runner, the run folder, the command, and every stage at toy size."""

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from support.benchmarks.runner import Case, PeakRSS, Work, measure

COLUMNS = ["stage", "task", "batch", "unit", "ours_rate", "ours_q1", "ours_q3", "peer_rate", "peer_q1", "peer_q3",
           "ratio", "ratio_min", "ratio_max", "ours_peak_rss_mib", "peer_peak_rss_mib", "peer", "rounds"]


def test_measure_interleaves_drops_the_warmup_and_takes_the_medians():
    calls = []
    ours_seconds = iter([9.0, 1.0, 2.0, 4.0])       # the first (warm-up) round is dropped
    peer_seconds = iter([9.0, 4.0, 4.0, 4.0])

    def ours():
        calls.append("ours")
        return Work(8, next(ours_seconds))

    def peer():
        calls.append("peer")
        return Work(8, next(peer_seconds))

    row = measure(Case("X", "t", "images/s", ours, peer, "them", batch=8), rounds=3, warmup=1)
    assert calls == ["ours", "peer"] * 4
    assert row["ours_rate"] == pytest.approx(4.0)             # median of 8/1, 8/2, 8/4
    assert row["ours_q1"] == pytest.approx(3.0) and row["ours_q3"] == pytest.approx(6.0)
    assert row["peer_rate"] == pytest.approx(2.0)
    assert row["ratio"] == pytest.approx(2.0)
    assert (row["ratio_min"], row["ratio_max"]) == (pytest.approx(1.0), pytest.approx(4.0))


def test_measure_with_warm_calls_keeps_every_round_and_refuses_empty_work():
    warmed = []
    row = measure(Case("X", "t", "images/s", lambda: Work(2, 1.0), lambda: Work(1, 1.0), "them",
                       warm_ours=lambda: warmed.append("o"), warm_peer=lambda: warmed.append("p")), rounds=2)
    assert warmed == ["o", "p"] and row["ratio"] == pytest.approx(2.0) and row["rounds"] == 2
    calls = []
    capped = measure(Case("X", "t", "images/s", lambda: calls.append(1) or Work(1, 1.0), lambda: Work(1, 1.0), "them",
                          rounds=1), rounds=3, warmup=1)
    assert capped["rounds"] == 1 and len(calls) == 2          # one warm-up round dropped, one kept
    with pytest.raises(ValueError, match="0 items"):
        measure(Case("X", "t", "images/s", lambda: Work(0, 1.0), lambda: Work(1, 1.0), "them"), rounds=1)
    with pytest.raises(TypeError, match="expected Work"):
        measure(Case("X", "t", "images/s", lambda: 3.0, lambda: Work(1, 1.0), "them"), rounds=1)


def test_peak_rss_sees_memory_held_only_during_the_call():
    def allocate():
        block = np.ones(64 * 2**20, dtype=np.uint8)        # 64 MiB, touched, freed on return
        time.sleep(0.1)                                      # held while the sampler thread looks
        return Work(float(block[::4096].sum() > 0), 1.0)

    row = measure(Case("X", "t", "images/s", allocate, lambda: Work(1, 1.0), "them"), rounds=1, warmup=0)
    assert row["ours_peak_rss_mib"] > 48
    assert row["peer_peak_rss_mib"] < 16
    with PeakRSS() as rss:
        pass
    assert rss.peak >= rss.start > 0


def test_run_folders_never_overwrite_each_other(tmp_path):
    from support.benchmarks.suite import new_run_folder

    folders = {new_run_folder(tmp_path) for _ in range(3)}
    assert len(folders) == 3 and all(f.is_dir() and f.parent == tmp_path for f in folders)


def test_the_command_runs_the_suite_without_a_stage_and_a_stage_alone_with_one(monkeypatch):
    from support import cli
    from support.benchmarks import ddpm, suite

    seen = []
    monkeypatch.setattr(suite, "main", lambda argv: seen.append(("suite", argv)) or 0)
    monkeypatch.setattr(ddpm, "main", lambda argv: seen.append(("ddpm", argv)) or 0)
    assert cli.main(["bench"]) == 0
    assert cli.main(["bench", "all", "--size", "toy"]) == 0
    assert cli.main(["bench", "--size", "toy"]) == 0
    assert cli.main(["bench", "ddpm", "--profile", "test"]) == 0
    assert seen == [("suite", []), ("suite", ["--size", "toy"]), ("suite", ["--size", "toy"]),
                    ("ddpm", ["--profile", "test"])]


def test_the_suite_at_toy_size_writes_one_table_with_every_stage_against_its_peer(tmp_path, capsys):
    from support.benchmarks.ddpm import import_reference
    from support.benchmarks.suite import STAGES, main

    if import_reference(None)[0] is None:
        pytest.skip("the DDPM peer (denoising-diffusion-pytorch) is not installed: make bench-deps")
    torch.set_num_threads(1)
    assert main(["--size", "toy", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    table = pd.read_csv(folder / "bench.csv")
    assert list(table.columns[:len(COLUMNS)]) == COLUMNS
    assert {"DDPM", "T2I-LoRA", "cleanup", "DINO", "CM-CGNS", "XGeM", "switch"} == set(table["stage"])
    assert len(STAGES) == 7
    switches = set(table.loc[table["stage"] == "switch", "task"])
    assert {f"DDPM train: {name}" for name in ("bf16 autocast", "SDPA fused attention", "channels-last",
                                                "fused Adam", "2 loader workers + pinned memory")} == switches
    for column in ("ratio", "ratio_min", "ratio_max", "ours_rate", "peer_rate"):
        values = pd.to_numeric(table[column], errors="raise")
        assert all(math.isfinite(v) and v > 0 for v in values), column
    assert (table["ratio_min"] <= table["ratio"] + 1e-9).all() and (table["ratio"] <= table["ratio_max"] + 1e-9).all()
    assert table["peer"].str.len().gt(0).all()
    ddpm = table[table["stage"] == "DDPM"]
    assert {"sample ddpm 20 steps", "sample ddim 5 steps", "sample dpmsolver++ 5 steps"} <= set(ddpm["task"])
    assert set(ddpm.loc[ddpm["task"].str.startswith("sample"), "batch"]) == {1, 4}
    dpm = ddpm[ddpm["task"].str.contains("dpmsolver")].iloc[0]
    assert dpm["fd_ours"] > 0 and dpm["fd_peer"] > 0 and dpm["fd_within_10pct"] in (True, False)

    result = json.loads((folder / "bench.json").read_text())
    assert result["size"] == "toy" and len(result["rows"]) == len(table)
    scaling = pd.read_csv(folder / "scaling.csv")
    assert sorted(scaling["processes"]) == [1, 1, 2, 2]
    assert all(math.isfinite(v) and v > 0 for v in scaling["efficiency"])
    assert (scaling.loc[scaling["processes"] == 1, "efficiency"] == 1.0).all()
    assert (folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "ours/peer" in printed and str(folder) in printed


def test_the_printed_table_stars_rows_measured_in_fewer_rounds():
    from support.benchmarks.suite import format_table

    row = {"stage": "DDPM", "task": "t", "batch": 8, "unit": "images/s", "ours_rate": 2.0, "ours_q1": 1.9,
           "ours_q3": 2.1, "peer_rate": 1.0, "peer_q1": 0.9, "peer_q3": 1.1, "ratio": 2.0, "ratio_min": 1.8,
           "ratio_max": 2.2, "ours_peak_rss_mib": 10.0, "peer_peak_rss_mib": 12.0, "peer": "them"}
    text = format_table(pd.DataFrame([{**row, "rounds": 3}, {**row, "task": "long walk", "rounds": 2}]))
    lines = text.splitlines()
    assert "2*" in next(line for line in lines if "long walk" in line)
    assert "3*" not in text and "1 rows measured in fewer than 3 rounds" in text
    assert "fewer than" not in format_table(pd.DataFrame([{**row, "rounds": 3}]))


def test_ddpm_ancestral_rows_run_only_at_their_batch_sizes(monkeypatch):
    from support.benchmarks import ddpm

    if ddpm.import_reference(None)[0] is None:
        pytest.skip("the DDPM peer (denoising-diffusion-pytorch) is not installed: make bench-deps")
    monkeypatch.setitem(ddpm.SUITE_SIZES, "toy", {**ddpm.SUITE_SIZES["toy"], "ancestral_batches": (1,),
                                                   "quality_updates": 0})
    rows = {(case.task.split()[1], case.batch) for case in ddpm.suite_cases("toy", "cpu") if case.task.startswith("sample")}
    assert rows == {("ddpm", 1), ("dpmsolver++", 1), ("ddim", 1), ("ddim", 4)}
    assert ddpm.SUITE_SIZES["default"]["ancestral_batches"] == (1, 8)     # no 1,000-step walk at batch 32 on 2 cores
