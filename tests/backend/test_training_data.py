"""Training data (backend/training/data.py, synthetic.py): the on-disk format, validation that names the
sequence and field of every problem, the S2.2 item sampler, the synthetic generator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.errors import MVP4DError
from backend.training.data import (
    DatasetError,
    MultiDataset,
    TrainingDataset,
    read_frames,
    validate_dataset,
    write_dataset_json,
)
from backend.training.synthetic import SyntheticConfig, generate_heldout_set, generate_synthetic_dataset

SMALL = SyntheticConfig(identities=2, seed=3, image_size=48, monocular_frames=21, multiview_image_views=6,
                        multiview_video_views=4, multiview_video_frames=13)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "train", SMALL)


def _copy(dataset_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(dataset_dir, dst)
    return dst


def _error(fn) -> DatasetError:
    with pytest.raises(DatasetError) as e:
        fn()
    assert e.value.code == "BAD_INPUT"
    return e.value


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_dataset_has_the_three_modalities_and_validates(dataset_dir):
    assert validate_dataset(dataset_dir, level="full") == []
    ds = TrainingDataset(dataset_dir)
    s = ds.summary()
    assert s["sequences"] == 6 and s["identities"] == 2
    assert s["modalities"] == {"monocular-video": 2, "multiview-images": 2, "multiview-video": 2}
    seqs = {x.name: x for x in ds.sequences}
    mono, mvimg, mvvid = seqs["id0000-mono"], seqs["id0000-mvimg"], seqs["id0000-mvvid"]
    assert (mono.num_views, mono.num_frames) == (1, 21)
    assert (mvimg.num_views, mvimg.num_frames) == (6, 1)
    assert (mvvid.num_views, mvvid.num_frames) == (4, 13)
    # same identity (shape) across the three, another one for id0001; expressions move in videos
    assert torch.equal(mono.params.shape, mvvid.params.shape)
    assert not torch.equal(mono.params.shape, seqs["id0001-mono"].params.shape)
    assert mono.params.expr.std(0).max() > 0.05 and mono.params.global_rot.std(0).max() > 0.01
    frames = read_frames(mvvid, "cam00", [0, 8])
    assert frames.shape == (2, 48, 48, 3) and frames.dtype == np.uint8
    assert (frames == 255).all(-1).mean() > 0.2 and (frames != 255).any(-1).mean() > 0.1  # head on white
    # deterministic: the same config writes the same pixels
    again = generate_synthetic_dataset(dataset_dir.parent / "again", SMALL)
    assert np.array_equal(read_frames(TrainingDataset(again).sequences[2], "cam00", [0, 8]), frames)


def test_heldout_identities_differ_from_training_ones(dataset_dir, tmp_path):
    held = TrainingDataset(generate_heldout_set(tmp_path / "held", identities=1, seed=3, image_size=48, eval_frames=9))
    (seq,) = held.sequences
    assert seq.views[0] == "ref" and seq.num_views == 9 and seq.num_frames == 9
    train_shapes = [s.params.shape for s in TrainingDataset(dataset_dir).sequences]
    assert all(not torch.allclose(seq.params.shape, s) for s in train_shapes)


def test_video_files_read_like_png_frames(tmp_path):
    cfg = SyntheticConfig(identities=1, seed=5, image_size=32, modalities=("multiview-video",), multiview_video_views=2,
                          multiview_video_frames=5)
    png = TrainingDataset(generate_synthetic_dataset(tmp_path / "png", cfg))
    vid_cfg = SyntheticConfig(**{**cfg.__dict__, "video_files": True})
    vid = TrainingDataset(generate_synthetic_dataset(tmp_path / "vid", vid_cfg), level="full")
    assert (tmp_path / "vid" / "id0000-mvvid" / "videos" / "cam01.avi").is_file()
    assert vid.sequences[0].frame_source == "video"
    a = read_frames(png.sequences[0], "cam01", [1, 4])
    b = read_frames(vid.sequences[0], "cam01", [1, 4])
    assert np.array_equal(a, b)  # FFV1 is lossless


# --------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("views,frames,stride", [(1, 9, 1), (1, 5, 2), (2, 5, 1), (4, 9, 1), (4, 1, 1), (5, 1, 1)])
def test_sampler_respects_vmax_fmax_and_picks_another_slot_as_reference(dataset_dir, views, frames, stride):
    ds = TrainingDataset(dataset_dir)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(12):
        it = ds.sample(rng, views, frames, 32, stride=stride)
        info = next(s for s in ds.sequences if s.name == it.sequence)
        seen.add(info.modality)
        assert info.num_views >= views and info.num_frames >= (frames - 1) * stride + 1
        assert len(set(it.views)) == views and set(it.views) <= set(info.views)
        assert it.frames == [it.frames[0] + stride * k for k in range(frames)]
        assert 0 <= it.frames[0] and it.frames[-1] < info.num_frames
        assert not (it.reference_view in it.views and it.reference_frame in it.frames)  # never a target slot
        if info.num_frames > (frames - 1) * stride + 1:  # frames to spare: the reference comes from outside the window
            assert it.reference_frame not in it.frames
        assert it.images.shape == (views, frames, 32, 32, 3) and it.reference_image.shape == (32, 32, 3)
        assert all((c.width, c.height) == (32, 32) for c in it.cameras)
        assert it.params.num_frames == frames and it.reference_params.num_frames == 1
        centre = it.images[:, :, 12:20, 12:20]
        assert (centre != 255).any(-1).mean() > 0.5  # the crop is centred on the head
    if views == 1 and frames > 1:
        assert "monocular-video" in seen or "multiview-video" in seen
    if frames == 1 and views >= 5:
        assert seen == {"multiview-images"}


def test_reference_prefers_views_facing_the_head(dataset_dir):
    ds = TrainingDataset(dataset_dir)
    idx = next(i for i, s in enumerate(ds.sequences) if s.modality == "multiview-images")
    ang = ds.facing(idx)
    rng = np.random.default_rng(1)
    for _ in range(20):
        views = [int(v) for v in rng.permutation(6)[:3]]
        v, f = ds.choose_reference(idx, rng, views, [0])
        assert v not in views
        others = [u for u in range(6) if u not in views]
        if any(ang[u, 0] <= ds.max_reference_angle for u in others):
            assert ang[v, 0] <= ds.max_reference_angle


def test_no_sequence_fits_names_the_resolution(dataset_dir):
    ds = TrainingDataset(dataset_dir)
    e = _error(lambda: ds.sample(np.random.default_rng(0), 6, 1, 32))  # 6 views = every view: no spare reference
    assert "6x1" in e.message and "6 views" in e.message
    e = _error(lambda: MultiDataset([ds]).check_resolutions([(1, 9), (2, 25)]))
    assert "2x25" in e.message and "1x9" not in e.message


# --------------------------------------------------------------------------------------------- bad input


def test_missing_frames_are_named(dataset_dir, tmp_path):
    root = _copy(dataset_dir, tmp_path)
    (root / "id0001-mvvid" / "images" / "cam02" / "0003.png").unlink()
    (root / "id0001-mvvid" / "images" / "cam02" / "0004.png").unlink()
    e = _error(lambda: TrainingDataset(root))
    assert "id0001-mvvid: images/cam02: frames 0003-0004 missing" in e.message
    assert len(e.problems) == 1 and e.problems[0].sequence == "id0001-mvvid"


def test_inconsistent_view_counts_are_named(dataset_dir, tmp_path):
    root = _copy(dataset_dir, tmp_path)
    cams = json.loads((root / "id0000-mvvid" / "cameras.json").read_text())
    del cams["cam03"]
    (root / "id0000-mvvid" / "cameras.json").write_text(json.dumps(cams))
    shutil.copytree(root / "id0001-mvimg" / "images" / "cam05", root / "id0001-mvimg" / "images" / "cam09")
    shutil.rmtree(root / "id0000-mono" / "mattes" / "cam00")
    problems = validate_dataset(root)
    text = "\n".join(map(str, problems))
    assert "id0000-mvvid: cameras.json: no camera for view(s) cam03: inconsistent view count" in text
    assert "id0001-mvimg: images/: has data for 1 view(s) not in sequence.json views (cam09)" in text
    assert "id0000-mono: mattes/: no frame folder or video for view(s) cam00" in text
    e = _error(lambda: TrainingDataset(root))
    assert len(e.problems) == 3 and all(p in e.message for p in ("id0000-mvvid", "id0001-mvimg", "id0000-mono"))


def test_nan_cameras_and_bad_flame_are_named(dataset_dir, tmp_path):
    root = _copy(dataset_dir, tmp_path)
    path = root / "id0001-mvvid" / "cameras.json"
    path.write_text(path.read_text().replace('"fx": ', '"fx": NaN, "_fx": ', 1))
    cams = json.loads(path.read_text())
    cams["cam02"]["world_to_cam"][0][3] = float("inf")
    path.write_text(json.dumps(cams))
    fl = root / "id0000-mono" / "flame.npz"
    data = {k: (v if k == "shape" else v[:-1]) for k, v in np.load(fl).items()}  # one frame short everywhere
    np.savez(fl, **data)
    fl2 = root / "id0001-mono" / "flame.npz"
    data = dict(np.load(fl2))
    data["jaw_pose"][3, 0] = np.nan
    np.savez(fl2, **data)
    text = "\n".join(map(str, validate_dataset(root)))
    assert "id0001-mvvid: cameras.json: cam00.fx: is nan, not a finite number (NaN/inf camera)" in text
    assert "id0001-mvvid: cameras.json: cam02.world_to_cam[0][3]: is inf, not a finite number" in text
    assert "id0000-mono: flame.npz: expr: has 20 frames, sequence.json num_frames is 21: inconsistent frame count" in text
    assert "id0001-mono: flame.npz: jaw_pose must hold finite numbers" in text


def test_wrong_size_and_corrupt_frames_are_named_when_read(dataset_dir, tmp_path):
    from PIL import Image

    root = _copy(dataset_dir, tmp_path)
    frame = root / "id0000-mvvid" / "images" / "cam01" / "0005.png"
    Image.new("RGB", (40, 48)).save(frame)
    text = "\n".join(map(str, validate_dataset(root, level="full")))
    assert "id0000-mvvid: images/cam01/0005.png: is 40×48, camera cam01 is 48×48" in text
    ds = TrainingDataset(root)  # structure level only checks the first frame of each view
    seq = next(s for s in ds.sequences if s.name == "id0000-mvvid")
    e = _error(lambda: read_frames(seq, "cam01", [4, 5]))
    assert "id0000-mvvid: images/cam01/0005.png" in e.message
    frame.write_bytes(b"not a png")
    e = _error(lambda: read_frames(seq, "cam01", [5]))
    assert "id0000-mvvid: images/cam01/0005.png: cannot be read" in e.message


def test_dataset_json_and_missing_files(tmp_path, dataset_dir):
    e = _error(lambda: TrainingDataset(tmp_path / "nope"))
    assert "does not exist" in e.message
    root = _copy(dataset_dir, tmp_path)
    write_dataset_json(root, "toy", ["id0000-mono", "ghost"])
    (root / "id0000-mono" / "sequence.json").write_text("{not json")
    text = "\n".join(map(str, validate_dataset(root)))
    assert "id0000-mono: sequence.json: not valid JSON" in text
    assert "ghost: : sequence folder" in text and "does not exist" in text
    (root / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    assert "dataset.json: format" in str(_error(lambda: TrainingDataset(root)).message)
    assert isinstance(_error(lambda: TrainingDataset(root)), MVP4DError)
