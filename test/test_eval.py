"""ditta-eval end to end on generated data: real tiny SegFormer, real random SAM2, real bags.

One set of models (seeded tiny SegFormer, random SAM2 hiera-t at image size 64) is built per
module and shared. Frames are 48 x 64 and the ISS input is fitted to 64 x 48 so that each run
takes seconds. The reliability threshold is 0 so the random SAM2 gets prompts and the
SAM2 paths (DiTTA's teacher, sam2-refine) really run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_eval import (
    LABEL_TOPIC,
    NUM_CLASSES,
    PERIOD_NS,
    T0_NS,
    write_bag,
    write_image_folder,
    write_vspw,
)

from ditta_ros.config import DittaConfig
from ditta_ros.errors import ConfigError
from ditta_ros.tools import datasets
from ditta_ros.tools.bags import BagSource
from ditta_ros.tools.eval import (
    EvalOptions,
    Models,
    build_config,
    build_models,
    evaluate,
    main,
    merge,
    run_parser,
    select_videos,
)
from ditta_ros.tools.report import METHODS

SMALL = ["--num-classes", str(NUM_CLASSES), "--iterations", "1", "--sam2-image-size", "64",
         "--set", "model.fit_long=64", "--set", "model.fit_short=48",
         "--set", "teacher.reliability_threshold=0.0", "--set", "teacher.max_objects=2",
         "--no-progress"]


def _config(*extra: str) -> DittaConfig:
    args = run_parser().parse_args(["unused", "-o", "unused", *SMALL, *extra])
    return build_config(args, NUM_CLASSES)


@pytest.fixture(scope="module")
def models() -> Models:
    return build_models(_config(), METHODS, lambda text: None)


def _options(out: Path, **kw: Any) -> EvalOptions:
    base: dict[str, Any] = {"output": out, "warmup_frames": 2, "progress": False,
                            "strip_frames": 3}
    base.update(kw)
    return EvalOptions(**base)


def _quiet(text: str) -> None:
    pass


def test_vspw_folder_all_methods(tmp_path: Path, models: Models) -> None:
    root = write_vspw(tmp_path / "vspw", videos=2, frames=6)
    refs = datasets.vspw_videos(root, "val", NUM_CLASSES)
    report = evaluate(refs, _config(), _options(tmp_path / "out"), models, _quiet)
    assert report["videos_evaluated"] == 2 and report["frames_evaluated"] == 8
    for method in METHODS:
        s = report["overall"][method]
        assert s["frames"] == 8
        assert s["miou"] is not None and 0 <= s["miou"] <= 100
        assert s["fps"] > 0
    assert report["overall"]["ditta"]["adaptation_s"] > 0
    out = tmp_path / "out"
    assert (out / "report.md").read_text().count("| 2 frames |") == 3
    for name in ("class_iou.png", "video_00_strip.png", "video_01_over_time.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    saved = json.loads((out / "videos" / "video_00.json").read_text())
    assert saved["warmup"] == 2 and saved["labelled"] == 4
    # SAM2 really ran: random SAM2 with threshold 0 prompts frame 0's classes.
    assert "SAM2 objects from frame 0" in saved["methods"]["sam2-refine"]["notes"][0]
    assert saved["methods"]["ditta"]["notes"][0].startswith("adapted on 2 warm-up frames")


def test_bags_with_and_without_labels(tmp_path: Path, models: Models) -> None:
    labelled = write_bag(tmp_path / "labelled", frames=6, storage="sqlite3", encoding="rgb8")
    plain = write_bag(tmp_path / "plain", frames=11, storage="mcap", encoding="jpeg",
                      labels=False)
    out = tmp_path / "out"
    refs = datasets.bag_videos([labelled], label_topic=LABEL_TOPIC)
    report = evaluate(refs, _config(), _options(out, output_bag=True), models, _quiet)
    assert report["overall"]["ditta"]["miou"] is not None
    refs = datasets.bag_videos([plain])
    out2 = tmp_path / "out2"
    report = evaluate(refs, _config(), _options(out2, methods=("iss",)), models, _quiet)
    s = report["overall"]["iss"]
    assert s["miou"] is None and s["mvc8"] is not None    # consistency and speed only
    assert "no ground truth" in report["videos"]["plain"]["methods"]["iss"]["notes"][0]
    # The output bag: input images copied, one label topic per method, same stamps.
    with BagSource(out / "bags" / "labelled", image_topic="/camera/image_raw") as bag:
        assert bag.stamps == [T0_NS + t * PERIOD_NS for t in range(2, 6)]
        assert {"/ditta_eval/iss/labels", "/ditta_eval/ditta/labels",
                "/ditta_eval/sam2_refine/labels", "/ditta_eval/ground_truth",
                "/ditta_eval/sam2_refine/labels_color"} <= set(bag.topics)
    with BagSource(out / "bags" / "labelled", image_topic="/ditta_eval/ground_truth",
                   label_topic="/ditta_eval/iss/labels") as bag:
        gt = bag.ground_truth()
        assert gt is not None and gt[0] is not None and gt[0].shape == (48, 64)


def test_shard_and_merge_equal_single_run(tmp_path: Path, models: Models) -> None:
    # The ISS method keeps this test fast; pooling does not depend on the method (the
    # DiTTA and sam2-refine results are stored and pooled by the same code).
    root = write_vspw(tmp_path / "vspw", videos=3, frames=11)
    refs = datasets.vspw_videos(root, "val", NUM_CLASSES)
    config = _config()
    methods = ("iss",)
    single = evaluate(refs, config, _options(tmp_path / "single", methods=methods,
                                             plots=False), models, _quiet)
    for k in range(2):
        evaluate(select_videos(refs, None, (k, 2)), config,
                 _options(tmp_path / f"shard{k}", methods=methods, plots=False), models, _quiet)
    merged = merge(tmp_path / "merged", [tmp_path / "shard0", tmp_path / "shard1"],
                   plots_wanted=False)
    assert merged["videos_evaluated"] == 3
    keys = ("miou", "wiou", "mvc8", "accuracy", "frames", "per_class_iou")
    for method in methods:
        for key in keys:
            assert merged["overall"][method][key] == single["overall"][method][key], key
    # The pooled state itself is identical, not only the rounded numbers.
    for name in ("video_00", "video_01", "video_02"):
        a = json.loads((tmp_path / "single" / "videos" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "merged" / "videos" / f"{name}.json").read_text())
        for method in methods:
            assert a["methods"][method]["confusion"] == b["methods"][method]["confusion"]
            assert a["methods"][method]["consistency"] == b["methods"][method]["consistency"]
    assert single["overall"]["iss"]["mvc8"] is not None
    with pytest.raises(ConfigError, match="other settings"):
        evaluate(refs[:1], _config("--iterations", "2"),
                 _options(tmp_path / "shard0", methods=methods, plots=False), models, _quiet)


def test_resume_skips_finished_videos(tmp_path: Path, models: Models) -> None:
    root = write_vspw(tmp_path / "vspw", videos=2, frames=12)
    refs = datasets.vspw_videos(root, "val", NUM_CLASSES)
    out = tmp_path / "out"
    options = _options(out, methods=("iss",), plots=False)
    evaluate(select_videos(refs, 1, None), _config(), options, models, _quiet)
    first = out / "videos" / "video_00.json"
    stamp = first.stat().st_mtime_ns
    said: list[str] = []
    report = evaluate(refs, _config(), options, models, said.append)
    assert report["videos_evaluated"] == 2
    assert report["overall"]["iss"]["mvc8"] is not None   # 10 evaluated frames: 2 windows
    assert first.stat().st_mtime_ns == stamp           # not redone
    assert any("resuming: 1 of 2" in s for s in said)


def test_cli_on_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_image_folder(tmp_path / "frames", frames=12)
    code = main([str(folder), "-o", str(tmp_path / "out"), *SMALL, "--methods", "iss",
                 "--warmup-ratio", "25", "--no-plots"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| 25 % | ISS frame by frame |" in captured.out
    assert "RANDOM" in captured.err                     # random models are announced
    saved = json.loads((tmp_path / "out" / "videos" / "frames.json").read_text())
    assert saved["warmup"] == 3 and saved["methods"]["iss"]["frames"] == 9


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_bag(tmp_path / "bag", frames=3)
    code = main([str(bag), "-o", str(tmp_path / "out"), "--image-topic", "/missing",
                 "--methods", "iss", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "no topic '/missing'" in err[0]
    code = main([str(bag), "-o", str(tmp_path / "out"), "--set", "model.nope=1"])
    assert code == 2 and "has no setting 'nope'" in capsys.readouterr().err
    code = main(["merge", str(tmp_path / "m"), str(tmp_path / "nothing")])
    assert code == 2 and "no run.json" in capsys.readouterr().err
