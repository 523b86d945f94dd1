"""The image feature kind, its decode cache, the batched augmentation and the image encoders."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hydranet.errors import DataError, UserError
from hydranet.features import FeatureGroup, ImageGroup
from hydranet.features import image as image_kind
from hydranet.models.encoders import ENCODERS
from hydranet.models.encoders.augment import augment, jitter_with
from hydranet.models.encoders.image import MobileNetV2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """``pixels [H, W, 3 or 4]`` uint8 as PNG bytes, optionally converted to ``mode``."""
    img = Image.fromarray(pixels, "RGBA" if pixels.shape[-1] == 4 else "RGB")
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def solid(rgb: tuple[int, ...], h: int = 6, w: int = 6) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, len(rgb))).copy()


def fitted(columns=("img",), **params) -> ImageGroup:
    return ImageGroup("g", list(columns), **params).fit(pa.table({}))


# ---------------------------------------------------------------- decoding
def test_decode_composites_on_white_and_resizes_the_whole_picture():
    clear = solid((255, 0, 0, 0))  # fully transparent red: white on the canvas
    clear[:, :3, 3] = 255  # left half opaque red
    out = image_kind.decode(png(clear), 6)
    assert out.shape == (3, 6, 6) and out.dtype == np.uint8
    assert (out[:, :, :3] == np.array([255, 0, 0]).reshape(3, 1, 1)).all()
    assert (out[:, :, 3:] == 255).all()
    # palette with a transparent colour, grey, and a non-square picture squashed, not cropped
    p = image_kind.decode(png(clear, "P"), 6)
    assert (p[:, :, 3:] == 255).all() and (p[0, :, :3] == 255).all() and (p[1, :, :3] == 0).all()
    grey = image_kind.decode(png(solid((90, 90, 90)), "L"), 4)
    assert (grey == 90).all()
    wide = solid((0, 0, 255), 4, 16)
    wide[:, 8:] = (0, 255, 0)  # right half green: still half the squashed picture
    out = image_kind.decode(png(wide), 8)
    assert (out[2, :, :3] == 255).all() and (out[1, :, 5:] == 255).all()


def test_paths_resolve_against_root_or_the_working_directory_and_null_is_white(
    tmp_path, monkeypatch
):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "red.png").write_bytes(png(solid((255, 0, 0))))
    (tmp_path / "blue.png").write_bytes(png(solid((0, 0, 255))))
    table = pa.table({
        "img": ["red.png", None, str(tmp_path / "blue.png")],
        "raw": pa.array([png(solid((0, 255, 0))), None, None], pa.binary()),
    })  # fmt: skip
    x = fitted(["img", "raw"], size=4, root=str(tmp_path / "pics")).transform(table)
    assert x.shape == (3, 2, 3, 4, 4) and x.dtype == torch.uint8
    assert x[0, 0, 0].eq(255).all() and x[0, 0, 1:].eq(0).all()  # red, from root
    assert x[1].eq(255).all() and x[2, 1].eq(255).all()  # nulls: white
    assert x[2, 0, 2].eq(255).all() and x[2, 0, :2].eq(0).all()  # an absolute path
    assert x[0, 1, 1].eq(255).all()  # bytes: green
    monkeypatch.chdir(tmp_path / "pics")
    y = fitted(size=4).transform(pa.table({"img": ["red.png"]}))
    torch.testing.assert_close(y[0, 0], x[0, 0])


def test_a_missing_or_undecodable_image_names_its_column_and_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(png(solid((1, 2, 3))))
    group = fitted(size=4, root=str(tmp_path))
    with pytest.raises(DataError, match=r"image column 'img' row 2: cannot read .*gone\.png"):
        group.transform(pa.table({"img": ["ok.png", None, "gone.png"]}))
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(DataError, match=r"image column 'img' row 1: cannot decode .*bad\.png"):
        group.transform(pa.table({"img": ["ok.png", "bad.png"]}))
    raw = pa.array([png(solid((1, 2, 3))), png(solid((1, 2, 3)))[:40]], pa.binary())
    with pytest.raises(DataError, match=r"image column 'img' row 1: cannot decode the image bytes"):
        group.transform(pa.table({"img": raw}))
    with pytest.raises(UserError, match=r"image column 'img' has type int64"):
        group.transform(pa.table({"img": [1, 2]}))
    assert not list(image_kind.cache_dir().glob("*.tmp"))  # no half-written file left behind


def test_the_second_transform_decodes_nothing_and_reads_the_cache_file(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(png(solid((40 * i, 10, 200))))
    n = image_kind.CACHE_MIN_ROWS  # fewer rows are decoded in memory, not cached
    table = pa.table({"img": [f"{i % 6}.png" for i in range(n)]})
    group = fitted(size=5, root=str(tmp_path))
    before, old = image_kind.decoded_count(), set(image_kind.cache_dir().glob("*.npy"))
    small = group.transform(table.slice(0, n - 1))
    assert image_kind.decoded_count() == before + n - 1
    assert set(image_kind.cache_dir().glob("*.npy")) == old  # a few rows leave no file
    before = image_kind.decoded_count()
    x = group.transform(table)
    torch.testing.assert_close(x[: n - 1], small, rtol=0, atol=0)
    assert image_kind.decoded_count() == before + n
    files = set(image_kind.cache_dir().glob("*.npy")) - old  # the cache dir is the session's
    stamps = {f: f.stat().st_mtime_ns for f in files}
    # another run: the group rebuilt from its saved state, nothing decoded, nothing rewritten
    again = FeatureGroup.from_dict(group.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warning on a read-only array would be raised
        y = again.transform(table)
    assert image_kind.decoded_count() == before + n
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert set(image_kind.cache_dir().glob("*.npy")) - old == files
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    # a memory map of the file, and the loader's row selection reads it
    (cache,) = files
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(cache) in maps.read_text()
    torch.testing.assert_close(y.index_select(0, torch.tensor([4, 1])), x[[4, 1]])
    # an edited file is decoded again (its size and mtime are in the key)
    (tmp_path / "3.png").write_bytes(png(solid((0, 0, 0), 7, 7)))
    os.utime(tmp_path / "3.png", ns=(1, 1))
    z = group.transform(table)
    assert image_kind.decoded_count() == before + 2 * n
    assert z[3].eq(0).all() and z[9].eq(0).all() and torch.equal(z[2], x[2])


# ---------------------------------------------------------------- augmentation
def test_augment_without_crop_flip_or_jitter_is_the_identity():
    x = torch.rand(4, 3, 9, 7)
    out = augment(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, jitter=0.0)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_augment_draws_each_sample_its_own_crop_and_flip():
    x = torch.rand(1, 3, 8, 8).expand(64, 3, 8, 8).contiguous()
    gen = torch.Generator().manual_seed(0)
    flipped = augment(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, generator=gen)
    is_flip = [torch.allclose(o, x[0].flip(-1), atol=1e-6) for o in flipped]
    is_same = [torch.allclose(o, x[0], atol=1e-6) for o in flipped]
    assert all(a != b for a, b in zip(is_flip, is_same, strict=True))  # one or the other
    assert 16 < sum(is_flip) < 48  # each sample its own coin
    cropped = augment(x, generator=torch.Generator().manual_seed(1))
    assert cropped.shape == x.shape and cropped.min() >= 0 and cropped.max() <= 1
    assert len({tuple(c.flatten()[:5].tolist()) for c in cropped}) == 64
    # the same generator state, the same augmentations
    again = augment(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, cropped, rtol=0, atol=0)


def test_batched_jitter_matches_torchvision_per_sample():
    from torchvision.transforms.v2 import functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 6, 6, generator=gen)
    f = 0.8 + 0.4 * torch.rand(3, 5, generator=gen)
    got = jitter_with(x, *(f[k].view(5, 1, 1, 1) for k in range(3)))
    for i in range(5):
        want = F.adjust_brightness(x[i], float(f[0, i]))
        want = F.adjust_contrast(want, float(f[1, i]))
        want = F.adjust_saturation(want, float(f[2, i]))
        torch.testing.assert_close(got[i], want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- encoders
def test_cnn_augments_only_once_put_in_training_mode():
    group, x = ENCODERS.get("cnn").example_group()
    torch.manual_seed(0)
    enc = ENCODERS.get("cnn")(group, None)
    torch.testing.assert_close(enc(x), enc(x), rtol=0, atol=0)  # just built: no augmentation
    enc.train()
    assert not torch.allclose(enc(x), enc(x))
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x), rtol=0, atol=0)
    plain = ENCODERS.get("cnn")(group, None, augment=False).train()
    torch.testing.assert_close(plain(x), plain(x), rtol=0, atol=0)


def test_cnn_pool_grid_keeps_where_an_item_is():
    # the same square top-left or bottom-right (an even shift, away from the borders): global
    # pooling sees the same values, a 2x2 grid sees which corner (multifashion's left/right)
    x = torch.zeros(2, 1, 3, 32, 32, dtype=torch.uint8)
    x[0, 0, :, 4:10, 4:10] = 255
    x[1, 0, :, 20:26, 20:26] = 255
    group = {"kind": "image", "shape": [1, 3, 32, 32]}
    torch.manual_seed(0)
    flat = ENCODERS.get("cnn")(group, None, channels=[4], augment=False).eval()
    torch.testing.assert_close(flat(x)[0], flat(x)[1])
    grid = ENCODERS.get("cnn")(group, None, channels=[4], augment=False, pool=2).eval()
    assert grid.proj.in_features == 4 * 2 * 2
    assert not torch.allclose(grid(x)[0], grid(x)[1])
    with pytest.raises(UserError, match="pool = 3 must divide the last feature map, 16x16"):
        ENCODERS.get("cnn")(group, None, channels=[4], pool=3)


def test_cnn_pool_grid_exports_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    group = {"kind": "image", "shape": [1, 3, 28, 28]}
    torch.manual_seed(0)
    enc = ENCODERS.get("cnn")(group, None, channels=[4, 8, 8], pool=2).eval()
    x = torch.randint(0, 256, (5, 1, 3, 28, 28), dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning, the TorchScript exporter's deprecation
        torch.onnx.export(
            enc,
            (x[:2],),
            buf,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, enc(x).numpy(), rtol=1e-5, atol=1e-5)


def mobilenet_file(tmp_path: Path) -> Path:
    from torchvision.models import mobilenet_v2

    path = tmp_path / "mobilenet_v2.pth"
    torch.save(mobilenet_v2().state_dict(), path)
    return path


def test_mobilenet_frozen_keeps_its_weights_and_batchnorm_statistics(tmp_path):
    group = {"kind": "image", "shape": [2, 3, 32, 32]}
    x = torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8)
    enc = MobileNetV2(group, None, weights=str(mobilenet_file(tmp_path)), out_dim=8)
    assert enc.out_dim == 16 and len(enc.blocks()) == 19
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    stats = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    enc.train()
    assert not enc.backbone.training and enc.proj.training
    enc(x).sum().backward()
    for k, v in enc.backbone.state_dict().items():
        torch.testing.assert_close(v, stats[k], rtol=0, atol=0, msg=k)
    assert enc.proj.weight.grad is not None
    # a frozen backbone: one row alone gives what it gives in the batch, even in training
    enc.augment = False
    torch.testing.assert_close(enc(x[1:2]), enc(x)[1:2])
    free = MobileNetV2(group, None, weights=str(mobilenet_file(tmp_path)), freeze=False).train()
    assert free.out_dim == 2 * 1280 and free.backbone.training
    assert (free.weights, free.freeze, free.unfreeze_after) == (
        str(tmp_path / "mobilenet_v2.pth"),
        False,
        None,
    )
    assert (free.unfreeze_blocks, free.lr_scale) == (1, 0.1)


def test_mobilenet_weights_errors_say_which_file_and_how_to_fetch_it(tmp_path):
    group = {"kind": "image", "shape": [1, 3, 32, 32]}
    fetch = r"hydranet fetch-weights mobilenet_v2"
    with pytest.raises(UserError, match=rf"params\.weights must name the \.pth file.*{fetch}"):
        MobileNetV2(group, None)
    with pytest.raises(UserError, match=rf"'{tmp_path}/gone\.pth' is not a file; .*{fetch}"):
        MobileNetV2(group, None, weights=str(tmp_path / "gone.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match=rf"junk\.pth' is not a readable weights file.*{fetch}"):
        MobileNetV2(group, None, weights=str(tmp_path / "junk.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"other\.pth' does not fit torchvision's mobilenet_v2"):
        MobileNetV2(group, None, weights=str(tmp_path / "other.pth"))


REAL_WEIGHTS = Path("~/.cache/hydranet/weights/mobilenet_v2/mobilenet_v2-b0353104.pth").expanduser()


@pytest.mark.skipif(not REAL_WEIGHTS.is_file(), reason="the ImageNet weights are not fetched")
def test_mobilenet_with_the_imagenet_weights_tells_red_from_blue():
    group = {"kind": "image", "shape": [1, 3, 64, 64]}
    enc = MobileNetV2(group, None, weights=str(REAL_WEIGHTS)).eval()
    x = torch.zeros(2, 1, 3, 64, 64, dtype=torch.uint8)
    x[0, 0, 0], x[1, 0, 2] = 255, 255
    with torch.no_grad():
        a, b = enc(x)
    assert torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-2)


# ---------------------------------------------------------------- end to end
def squares(n: int, seed: int) -> pa.Table:
    """A red or blue square on noise: ``red`` is the colour, ``big`` the square's size."""
    rng = np.random.default_rng(seed)
    red, big = rng.random(n) < 0.5, rng.random(n) < 0.5
    pics = []
    for r, b in zip(red, big, strict=True):
        pixels = rng.integers(0, 120, (24, 24, 3), dtype=np.uint8)
        side = 16 if b else 8
        top, left = rng.integers(0, 24 - side + 1, 2)
        pixels[top : top + side, left : left + side] = (230, 30, 30) if r else (30, 30, 230)
        pics.append(png(pixels))
    return pa.table({
        "pic": pa.array(pics, pa.binary()),
        "red": red.astype(np.int64),
        "big": big.astype(np.int64),
    })  # fmt: skip


def test_a_cnn_learns_two_tasks_from_pictures(tmp_path):
    import hydranet

    paths = {}
    for i, (split, n) in enumerate([("train", 400), ("validation", 200), ("test", 50)]):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(squares(n, seed=i), paths[split])
    spec = hydranet.Spec.from_dict({
        "name": "squares",
        "data": paths,
        "features": [{"name": "pic", "kind": "image", "columns": ["pic"], "params": {"size": 24}}],
        "tasks": [{"name": "red", "kind": "binary"}, {"name": "big", "kind": "binary"}],
        "model": {"architecture": "shared_bottom", "tower": [8],
                  "encoders": {"pic": {"name": "cnn", "params": {
                      "channels": [8, 16, 16], "out_dim": 16, "flip": True}}}},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 0},
    })  # fmt: skip
    run = hydranet.train(spec, tmp_path / "run", progress=False)
    metrics = run.final_metrics["validation"]
    assert metrics["red"]["auc"] > 0.9, metrics
    assert metrics["big"]["auc"] > 0.9, metrics


def test_a_resumed_run_draws_the_same_augmentations(tmp_path):
    """The augmentation draws from torch's global RNG, which every checkpoint saves: a run
    stopped mid-epoch and resumed ends with the weights of one run straight through."""
    from safetensors.torch import load_file

    from hydranet.spec import Spec
    from hydranet.train.trainer import setup

    paths = {}
    for i, (split, n) in enumerate([("train", 96), ("validation", 32)]):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(squares(n, seed=i), paths[split])
    spec = Spec.from_dict({
        "data": paths,
        "features": [{"name": "pic", "kind": "image", "columns": ["pic"], "params": {"size": 12}}],
        "tasks": [{"name": "red", "kind": "binary"}],
        "model": {"architecture": "shared_bottom", "tower": [4],
                  "encoders": {"pic": {"name": "cnn", "params": {"channels": [4], "out_dim": 4}}}},
        "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 3, "seed": 0},
    })  # fmt: skip
    setup(spec, tmp_path / "whole", progress=False).fit()
    setup(spec, tmp_path / "part", progress=False).fit(stop_after_steps=7)
    setup(spec, tmp_path / "part", resume=True, progress=False).fit()
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    part = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert whole.keys() == part.keys()
    for k in whole:
        torch.testing.assert_close(part[k], whole[k], rtol=0, atol=0, msg=k)
    # and the augmentation did draw: without it the weights differ
    plain = spec.model_copy(deep=True)
    plain.model.encoders["pic"].params["augment"] = False
    setup(plain, tmp_path / "plain", progress=False).fit()
    other = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert not all(torch.equal(other[k], whole[k]) for k in whole)
