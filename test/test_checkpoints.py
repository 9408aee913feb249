"""Tests of engine/checkpoints.py and the ditta-convert-checkpoint script: real transformers
SegFormer models (tiny, seeded), real files in tmp_path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_model import (
    NUM_CLASSES,
    TINY_HEADS,
    outputs,
    perturb_head,
    tiny_config,
    to_nvlabs_state,
)
from safetensors.torch import load_file, save_file
from transformers import SegformerForSemanticSegmentation, SegformerModel

from ditta_ros.engine.checkpoints import (
    build_model,
    convert_mmseg_checkpoint,
    load_adaptation,
    save_adaptation,
    save_model,
)
from ditta_ros.engine.model import SegformerISS, model_identity, segformer_config
from ditta_ros.errors import CheckpointError
from ditta_ros.tools.convert_checkpoint import main as convert_main

CLASSES = ["sky", "road", "car", "tree", "person"]


def _clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


def _assert_same_outputs(a: Any, b: Any) -> None:
    x = _clip()
    out_a, out_b = outputs(a, x), outputs(b, x)
    for key in out_a:
        torch.testing.assert_close(out_a[key], out_b[key], rtol=1e-6, atol=1e-6, msg=key)


def _source_model() -> Any:
    model = build_model(tiny_config(), "cpu")
    perturb_head(model)
    return model


@pytest.fixture()
def nvlabs_file(tmp_path: Path) -> tuple[Any, Path]:
    model = _source_model()
    path = tmp_path / "iss_nvlabs.pth"
    torch.save({"state_dict": to_nvlabs_state(model), "meta": {"CLASSES": tuple(CLASSES)}},
               path)
    return model, path


# --- build_model ---------------------------------------------------------------------------

def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    rng = torch.get_rng_state()
    a = build_model(tiny_config(), "cpu")
    assert torch.equal(torch.get_rng_state(), rng)
    b = build_model(tiny_config(), "cpu")
    c = build_model(tiny_config(seed=4), "cpu")
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["addon.mlp_q.0.weight"], sc["addon.mlp_q.0.weight"])
    assert not torch.equal(sa["iss.model.decode_head.classifier.weight"],
                           sc["iss.model.decode_head.classifier.weight"])
    assert sa["iss.model.segformer.stages.0.patch_embeddings.proj.weight"].std() > 0
    assert a.head_seed == 3 and not a.training
    assert a.num_classes == NUM_CLASSES


def test_published_variant_builds() -> None:
    model = build_model(tiny_config(variant="b0", embed_dim=64), "cpu")
    assert list(model.iss.config.hidden_sizes) == [32, 64, 160, 256]
    assert list(model.iss.config.num_attention_heads) == [1, 2, 5, 8]
    encoder = sum(p.numel() for p in model.iss.backbone_parameters())
    assert 3.2e6 < encoder < 3.5e6  # MiT-B0 encoder, about 3.3 M parameters
    feats, logits = outputs(model, torch.randn(2, 3, 64, 64))["features"], None
    assert feats.shape == (2, 64, 16, 16) and logits is None


def test_missing_checkpoint_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=f"{missing}.*does not exist.*model.checkpoint"):
        build_model(tiny_config(checkpoint=str(missing)), "cpu")


def test_hf_directory_loads(tmp_path: Path) -> None:
    hf_config = segformer_config("tiny", NUM_CLASSES, 32)
    hf_config.id2label = dict(enumerate(CLASSES))
    hf_config.label2id = {n: i for i, n in enumerate(CLASSES)}
    torch.manual_seed(5)
    original = SegformerForSemanticSegmentation(hf_config)
    original.save_pretrained(tmp_path / "hf")
    model = build_model(tiny_config(checkpoint=str(tmp_path / "hf")), "cpu")
    assert model.class_names == CLASSES and model.head_seed == 3
    reference = SegformerISS(original, dropout=0.0, drop_path=0.0).eval()
    x = _clip()
    with torch.no_grad():
        expected = reference.forward_features(x)
        got = model.eval().iss.forward_features(x)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    # same weights, other seed: same base model, other head
    again = build_model(tiny_config(checkpoint=str(tmp_path / "hf"), seed=9), "cpu")
    assert again.identity == model.identity
    assert not torch.equal(again.addon.mlp_q[0].weight, model.addon.mlp_q[0].weight)


def test_hf_directory_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty.*without config.json"):
        build_model(tiny_config(checkpoint=str(tmp_path / "empty")), "cpu")
    backbone_only = SegformerModel(segformer_config("tiny", NUM_CLASSES, 32))
    backbone_only.save_pretrained(tmp_path / "mit")
    with pytest.raises(CheckpointError, match="mit.*missing_keys.*decode_head"):
        build_model(tiny_config(checkpoint=str(tmp_path / "mit")), "cpu")


def test_model_file_round_trip(tmp_path: Path) -> None:
    model = _source_model()
    model.class_names = CLASSES
    save_model(model, tmp_path / "m.pt")
    loaded = build_model(tiny_config(checkpoint=str(tmp_path / "m.pt"), seed=99), "cpu")
    # perturb_head changed the BN statistics after build: the file holds another base model
    assert loaded.identity == model_identity(model.iss) != model.identity
    assert loaded.class_names == CLASSES and loaded.head_seed == 3
    state, expected = loaded.state_dict(), model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)  # head carried, not seeded
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    _assert_same_outputs(model, loaded)


def test_model_file_problems(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pt.*not a readable torch"):
        build_model(tiny_config(checkpoint=str(garbage)), "cpu")
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"backbone.norm1.weight": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth.*not a ditta_ros.*ditta-convert"):
        build_model(tiny_config(checkpoint=str(foreign)), "cpu")
    model = _source_model()
    save_model(model, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    key = "iss.model.decode_head.classifier.weight"
    blob["state_dict"][key] = torch.zeros(7, 32, 1, 1)
    torch.save(blob, tmp_path / "bad_shape.pt")
    with pytest.raises(CheckpointError, match=f"bad_shape.pt.*shape mismatches.*{key}"):
        build_model(tiny_config(checkpoint=str(tmp_path / "bad_shape.pt")), "cpu")
    blob["state_dict"][key] = model.state_dict()[key]
    del blob["state_dict"]["addon.mlp_k.2.bias"]
    torch.save(blob, tmp_path / "no_key.pt")
    with pytest.raises(CheckpointError, match="no_key.pt.*missing keys.*addon.mlp_k.2.bias"):
        build_model(tiny_config(checkpoint=str(tmp_path / "no_key.pt")), "cpu")
    blob["version"] = 99
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="future.pt.*version 99"):
        build_model(tiny_config(checkpoint=str(tmp_path / "future.pt")), "cpu")


# --- conversion ----------------------------------------------------------------------------

def test_convert_gives_identical_model(nvlabs_file: tuple[Any, Path], tmp_path: Path) -> None:
    source, src = nvlabs_file
    report = convert_mmseg_checkpoint(src, tmp_path / "out.pt", num_heads=(1, 1, 2, 4))
    assert report.variant == "tiny" and report.num_classes == NUM_CLASSES
    assert report.embed_dim == 32 and report.depths == (1, 1, 1, 1)
    assert report.head_from_checkpoint and report.head_seed is None
    assert report.ignored == ("decode_head.conv_seg.bias", "decode_head.conv_seg.weight")
    assert report.class_names == tuple(CLASSES)
    converted = build_model(tiny_config(checkpoint=str(tmp_path / "out.pt")), "cpu")
    assert converted.identity == model_identity(source.iss) == report.identity
    assert converted.class_names == CLASSES
    _assert_same_outputs(source, converted)
    assert "MiT-tiny" in report.summary() and "carried over" in report.summary()


def test_convert_bare_state_dict_conv_head_and_module_prefix(tmp_path: Path) -> None:
    source = _source_model()
    state = {f"module.{k}": v for k, v in to_nvlabs_state(source, head_as_conv=True).items()}
    torch.save(state, tmp_path / "bare.pth")
    convert_mmseg_checkpoint(tmp_path / "bare.pth", tmp_path / "out.pt", num_heads=(1, 1, 2, 4))
    _assert_same_outputs(source, build_model(tiny_config(checkpoint=str(tmp_path / "out.pt")),
                                             "cpu"))


def test_convert_without_head_seeds_it(tmp_path: Path) -> None:
    source = _source_model()
    torch.save({"state_dict": to_nvlabs_state(source, with_head=False)}, tmp_path / "iss.pth")
    report = convert_mmseg_checkpoint(tmp_path / "iss.pth", tmp_path / "out.pt",
                                      num_heads=(1, 1, 2, 4), seed=3)
    assert not report.head_from_checkpoint and report.head_seed == 3
    assert "seed 3" in report.summary() and report.class_names is None
    converted = build_model(tiny_config(checkpoint=str(tmp_path / "out.pt")), "cpu")
    seeded = build_model(tiny_config(), "cpu")  # seed 3: the same head initialisation
    assert torch.equal(converted.addon.mlp_q[0].weight, seeded.addon.mlp_q[0].weight)
    assert converted.head_seed == 3


def test_convert_published_size_infers_heads(tmp_path: Path) -> None:
    source = build_model(tiny_config(variant="b0", embed_dim=64), "cpu")
    torch.save({"state_dict": to_nvlabs_state(source)}, tmp_path / "b0.pth")
    report = convert_mmseg_checkpoint(tmp_path / "b0.pth", tmp_path / "b0.pt")
    assert report.variant == "b0" and report.num_heads == (1, 2, 5, 8)
    converted = build_model(tiny_config(checkpoint=str(tmp_path / "b0.pt")), "cpu")
    assert converted.identity == source.identity


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": state}, path)
    return path


def test_convert_refusals_name_the_problem(tmp_path: Path) -> None:
    source = _source_model()
    good = to_nvlabs_state(source)
    dst = tmp_path / "out.pt"
    heads = (1, 1, 2, 4)

    state = dict(good)
    del state["backbone.block2.0.attn.kv.weight"]
    src = _save_state(tmp_path / "missing.pth", state)
    with pytest.raises(CheckpointError, match=r"missing.pth.*missing keys.*block2\.0\.attn\.kv"):
        convert_mmseg_checkpoint(src, dst, num_heads=heads)

    state = dict(good)
    state["backbone.block3.0.mlp.fc2.weight"] = torch.zeros(64, 100)
    src = _save_state(tmp_path / "shape.pth", state)
    with pytest.raises(CheckpointError,
                       match=r"shape.pth.*shape mismatches.*block3\.0\.mlp\.fc2\.weight"):
        convert_mmseg_checkpoint(src, dst, num_heads=heads)

    state = dict(good)
    state["backbone.extra_layer.weight"] = torch.zeros(3)
    src = _save_state(tmp_path / "extra.pth", state)
    with pytest.raises(CheckpointError, match=r"extra.pth.*unexpected keys.*extra_layer"):
        convert_mmseg_checkpoint(src, dst, num_heads=heads)

    state = {k: v for k, v in good.items() if not k.startswith("decode_head.key_layer")}
    src = _save_state(tmp_path / "partial.pth", state)
    with pytest.raises(CheckpointError, match=r"partial.pth.*add-on is incomplete.*key_layer"):
        convert_mmseg_checkpoint(src, dst, num_heads=heads)

    src = _save_state(tmp_path / "tiny.pth", good)
    with pytest.raises(CheckpointError, match=r"tiny.pth.*--num-heads"):
        convert_mmseg_checkpoint(src, dst)

    with pytest.raises(CheckpointError, match=r"absent.pth.*does not exist"):
        convert_mmseg_checkpoint(tmp_path / "absent.pth", dst)

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list.pth.*no state dict"):
        convert_mmseg_checkpoint(tmp_path / "list.pth", dst)
    assert not dst.exists()  # nothing written on refusal


# --- adaptation files ----------------------------------------------------------------------

def test_adaptation_round_trip_and_identity_check(tmp_path: Path) -> None:
    adapted = build_model(tiny_config(), "cpu")
    perturb_head(adapted)
    with torch.no_grad():
        adapted.iss.model.decode_head.linear_fuse.weight.mul_(1.5)
    path = tmp_path / "adaptation.pt"
    save_adaptation(adapted, path, {"frames": 30, "note": "test"})
    fresh = build_model(tiny_config(), "cpu")
    meta = load_adaptation(fresh, path)
    assert meta == {"frames": 30, "note": "test"}
    _assert_same_outputs(adapted, fresh)

    other = build_model(tiny_config(seed=4), "cpu")
    before = {k: v.clone() for k, v in other.adaptation_state().items()}
    with pytest.raises(CheckpointError) as info:
        load_adaptation(other, path)
    assert adapted.identity in str(info.value) and other.identity in str(info.value)
    assert all(torch.equal(v, other.adaptation_state()[k]) for k, v in before.items())

    with pytest.raises(CheckpointError, match="gone.pt.*does not exist"):
        load_adaptation(fresh, tmp_path / "gone.pt")
    save_model(adapted, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt.*not a ditta_ros adaptation"):
        load_adaptation(fresh, tmp_path / "model.pt")


# --- console script ------------------------------------------------------------------------

def test_console_script(nvlabs_file: tuple[Any, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    _, src = nvlabs_file
    dst = tmp_path / "converted.pt"
    assert convert_main([str(src), str(dst), "--num-heads", TINY_HEADS]) == 0
    assert dst.is_file() and "converted" in capsys.readouterr().out

    assert convert_main([str(src), str(dst), "--num-heads", TINY_HEADS]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and err.count("\n") == 1

    names = tmp_path / "names.txt"
    names.write_text("# classes\n" + "\n".join(f"c{i}" for i in range(NUM_CLASSES)) + "\n")
    assert convert_main([str(src), str(dst), "--num-heads", TINY_HEADS, "--force",
                         "--class-names", str(names), "--json"]) == 0
    assert '"class_names"' in capsys.readouterr().out
    assert build_model(tiny_config(checkpoint=str(dst)), "cpu").class_names == [
        f"c{i}" for i in range(NUM_CLASSES)]

    assert convert_main([str(tmp_path / "absent.pth"), str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "absent.pth" in err and err.count("\n") == 1
    assert convert_main([str(src), str(tmp_path / "y.pt")]) == 2  # tiny widths need heads
    assert "--num-heads" in capsys.readouterr().err


_LEGACY = [  # today's transformers names -> the names of older SegFormer directories
    (r"segformer\.stages\.(\d)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"segformer\.stages\.(\d)\.layer_norm", r"segformer.encoder.layer_norm.\1"),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "mlp.dense1"),
    (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
    (r"decode_head\.linear_projections", "decode_head.linear_c"),
]


def test_hf_directory_with_legacy_key_names_loads(tmp_path: Path) -> None:
    """Published SegFormer directories (nvidia/segformer-*) use the older module names."""
    torch.manual_seed(6)
    original = SegformerForSemanticSegmentation(segformer_config("tiny", NUM_CLASSES, 32))
    original.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    legacy = {}
    for key, value in state.items():
        for pattern, replacement in _LEGACY:
            key = re.sub(pattern, replacement, key)
        legacy[key] = value.half()  # also: half-precision files load as float32
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in legacy
    save_file(legacy, str(weights), metadata={"format": "pt"})
    model = build_model(tiny_config(checkpoint=str(tmp_path / "hf")), "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    expected = original.state_dict()
    got = model.iss.model.state_dict()
    assert all(torch.equal(got[k], expected[k].half().float()) for k in expected)
