"""The bench scripts still run: each importable core on tiny sizes for a few frames.

These check the structure of the results, never a speed (timings belong in BENCHMARKS.md,
not in the test suite). The pure helpers get answers known by construction.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_adaptation  # noqa: E402
import bench_flops  # noqa: E402
import bench_load  # noqa: E402
import bench_node  # noqa: E402
import common  # noqa: E402
import soak  # noqa: E402
from node_harness import pair_records  # noqa: E402

TINY_NODE = {"num_classes": 4, "embed_dim": 32, "fit": (64, 48)}


# ----------------------------------------------------------------------------- pure helpers


def test_percentile_and_median_by_construction() -> None:
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert common.percentile([5.0], 50) == 5.0
    assert math.isnan(common.median([]))
    assert math.isnan(common.ratio(1.0, 0.0))


def test_parse_size_rejects_bad_text() -> None:
    assert common.parse_size("480x640") == (480, 640)
    with pytest.raises(argparse.ArgumentTypeError):
        common.parse_size("480-640")


def test_rss_of_this_process_is_read_from_proc() -> None:
    rss = common.rss_bytes()
    assert rss is not None and rss > 10 * 2**20
    assert common.peak_rss_bytes() >= rss


def test_memory_growth_of_a_linear_ramp_and_of_a_flat_sawtooth() -> None:
    # 1 MiB per second for 60 s: window peaks rise 60 MiB/min; after the first quarter
    # (t >= 15) the halves peak at 37 and 60 MiB above 100: peak growth 23 MiB.
    samples = [(float(t), (100 + t) * 2**20) for t in range(61)]
    out = bench_load.memory_growth(samples, 0.25)
    assert out["slope_mib_per_min"] == pytest.approx(60.0)
    assert out["growth_mib"] == pytest.approx(45.0)
    assert out["peak_growth_mib"] == pytest.approx(23.0)
    # Per-frame swings without a leak: 200 / 300 MiB alternating: no growth at all.
    saw = [(float(t), (200 + 100 * (t % 2)) * 2**20) for t in range(60)]
    flat = bench_load.memory_growth(saw, 0.25)
    assert flat["peak_growth_mib"] == 0.0
    assert flat["slope_mib_per_min"] == pytest.approx(0.0, abs=1e-9)


def test_pair_records_matches_each_label_with_the_push_that_served_it() -> None:
    # Two frames stamped at 10 s and 20 s; pushes [10.1, 10.5] and [20.2, 20.9]; labels
    # back at 10.6 and 21.0. A third label has no push inside its window: left out.
    records = [[0, 10.1, 10.5, 0.3], [1, 20.2, 20.9, 0.6]]
    sent = [(10 * 10**9, 10.6), (20 * 10**9, 21.0), (30 * 10**9, 30.5), (40 * 10**9, None)]
    pairs = pair_records(sent, records)
    assert len(pairs) == 2
    assert pairs[0]["e2e"] == pytest.approx(0.6)
    assert pairs[0]["overhead"] == pytest.approx(0.3)
    assert pairs[0]["before"] == pytest.approx(0.1)
    assert pairs[0]["after"] == pytest.approx(0.1)
    assert pairs[1]["overhead"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- the scripts


def test_adaptation_bench_reports_every_stage_for_each_case() -> None:
    args = argparse.Namespace(variant="tiny", num_classes=4, embed_dim=16, sam2_image_size=128,
                              max_objects=3, iterations=1, device="cpu")
    out = bench_adaptation.run_adaptation_bench([(32, 48), (48, 64)], [2], args,
                                                torch.device("cpu"), progress=False)
    assert [c["frame"] for c in out["cases"]] == [[32, 48], [48, 64]]
    for case in out["cases"]:
        assert set(case["seconds"]) == {"A", "B", "C"}
        assert case["seconds"]["A"] > 0 and case["seconds"]["B"] > 0
        if case["num_objects"]:
            assert case["steps"] == 2 and case["seconds"]["C"] > 0
        assert case["x_length"]["A"] == pytest.approx(1.0)
    assert out["cases"][0]["x_size"]["B"] == pytest.approx(1.0)
    assert "hiera-t" in out["sam2"]
    text = bench_adaptation.to_markdown({"machine": common.machine_info(torch.device("cpu")),
                                         "command": "x", "date": "d", "bench": out})
    assert "| 48 x 64 | 2 |" in text


@pytest.mark.slow
def test_flop_count_of_the_addon_is_its_formula() -> None:
    out = bench_flops.count_variant("tiny", (64, 96), 8)
    h, w, d = 16, 24, out["embed_dim"]
    assert out["addon_mlps"] == 4 * 2 * h * w * d * d          # 4 linear layers D x D
    # Tiled attention: 2 x 3 tiles of 8 x 8 queries, each against 18 x 18 keys, scores (D)
    # and the value sum (C classes).
    assert out["addon_attention"] == 2 * 6 * 64 * 18 * 18 * (d + 8)
    assert out["addon_attention_window"] == 2 * h * w * 121 * (d + 8)
    assert out["addon"] == out["addon_mlps"] + out["addon_attention"]
    assert 0 < out["encoder"] < out["network"]
    assert out["floor"] == pytest.approx(1 + out["addon"] / out["network"])
    text = bench_flops.to_markdown({"command": "x", "variants": [out]})
    assert "| tiny (D 256) |" in text


def test_node_bench_measures_each_frame_over_dds() -> None:
    out = bench_node.run_node_bench([(48, 64)], frames=2, warmup=1, **TINY_NODE)
    (row,) = out["sizes"]
    assert row["frame"] == [48, 64] and row["lost"] == 0
    assert row["frames_measured"] == 2
    assert row["e2e_ms"] > row["model_ms"] > 0
    assert row["overhead_ms"] == pytest.approx(row["e2e_ms"] - row["model_ms"], abs=50.0)
    assert len(row["all_ms"]["overhead"]) == 2
    assert row["relay_e2e_ms"] > 0 and row["overhead_over_relay"] > 0     # the baseline ran


@pytest.mark.slow
def test_load_bench_accounts_for_offered_frames() -> None:
    out = bench_load.run_load_bench((48, 64), [2.0], 2.0, calibration_frames=2, **TINY_NODE)
    assert out["processing_rate_hz"] > 0
    (level,) = out["levels"]
    assert level["offered"] >= 1
    assert 0 <= level["processed"] <= level["offered"]
    assert 0.0 <= level["drop_share"] <= 1.0
    assert level["rss_samples"] and all(r > 0 for _, r in level["rss_samples"])


@pytest.mark.slow
def test_soak_records_rows_and_writes_csv_and_plot(tmp_path: Path) -> None:
    out = soak.run_soak((48, 64), rate_hz=4.0, duration_s=3.5, window_s=1.0, **TINY_NODE)
    rows = out["rows"]
    assert len(rows) >= 2
    assert set(rows[0]) == set(soak.COLUMNS)
    assert out["summary"]["offered"] >= 1
    soak.write_csv(rows, tmp_path / "soak.csv")
    soak.write_plot(rows, tmp_path / "soak.png", "smoke")
    assert (tmp_path / "soak.csv").read_text().startswith(",".join(soak.COLUMNS))
    assert (tmp_path / "soak.png").stat().st_size > 1000


def test_cross_cases_leave_out_the_costly_corner() -> None:
    sizes = [(120, 214), (240, 427)]
    assert bench_adaptation.case_list(sizes, [10, 30], full_grid=True) == [
        (120, 214, 10), (120, 214, 30), (240, 427, 10), (240, 427, 30)]
    assert bench_adaptation.case_list(sizes, [10, 30], full_grid=False) == [
        (120, 214, 10), (120, 214, 30), (240, 427, 10)]
