"""Property tests (hypothesis) that complete the ones kept next to their modules.

Already proven elsewhere, and not repeated here:

* ``convert`` round trips are bit-exact for random shapes, dtypes, chunkings, block sizes and all
  four formats: ``test_io.py::test_convert_property_round_trip``.
* Instance metrics do not change when prediction or ground-truth ids are permuted (also to ids
  above 2**32): ``test_metrics.py::test_relabelling_changes_nothing``; semantic IoU/Dice are
  symmetric: ``test_metrics.py::test_semantic_iou_is_symmetric``.
* Targets on random instances: binary = label > 0, affinities in {0, 1}, contours exactly on
  instance borders, finite distances positive only inside objects, invariance to id permutation:
  ``test_targets.py::test_properties``.

Added here: ARAND/VOI are 0 for any two labelings of one partition and swap roles when prediction
and truth swap; streamed metrics equal whole-volume metrics for any chunking; each affinity
channel is exactly "same object at the offset"; multi-channel volumes round-trip; a resumable
write interrupted anywhere and resumed equals one uninterrupted write; blocked inference equals
whole-volume inference for any block size; a config survives dump → load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytc.config import TargetConfig, config_from_dict, dump_config, load_config
from pytc.data.targets import build_targets
from pytc.io import convert, create_volume, iter_blocks, open_volume
from pytc.metrics import evaluate, instance_metrics
from pytc.models import build_model

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
small_shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))


def label_volumes(max_id: int = 6, background: bool = True):
    lo = 0 if background else 1
    return small_shapes.flatmap(lambda s: arrays(np.uint8, s, elements=st.integers(lo, max_id)))


class Chunked:
    """A numpy array that announces a chunk shape, like an h5py/zarr array."""

    def __init__(self, data: np.ndarray, chunks):
        self.data, self.chunks = data, tuple(min(c, n) for c, n in zip(chunks, data.shape))
        self.shape, self.dtype, self.attrs = data.shape, data.dtype, {}

    def __getitem__(self, index):
        return self.data[index]


# ------------------------------------------------------------------------------------ metrics --
@settings(max_examples=60, **SETTINGS)
@given(gt=label_volumes(), perm=st.permutations(range(1, 7)), offset=st.sampled_from([0, 1000, 2**40]))
def test_arand_and_voi_are_zero_for_one_partition_under_any_ids(gt, perm, offset):
    lut = np.array([0, *(p + offset for p in perm)], np.uint64)  # background stays background
    m = instance_metrics(lut[gt], gt)
    if not (gt > 0).any():  # nothing to score: undefined, not a crash and not a fake 0
        assert np.isnan(m["adapted_rand"]) and np.isnan(m["voi"])
        return
    assert m["adapted_rand"] == 0.0 and m["voi_split"] == 0.0 and m["voi_merge"] == 0.0
    assert m["are_precision"] == 1.0 == m["are_recall"]
    assert m["ap_50"] == 1.0 and m["n_pred"] == m["n_gt"] == len(np.unique(gt[gt > 0]))


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_swapping_prediction_and_truth_swaps_split_and_merge(data):
    # Without background (which the Rand error and VOI ignore in the truth only) the two roles mirror.
    a = data.draw(label_volumes(background=False))
    b = data.draw(arrays(np.uint8, a.shape, elements=st.integers(1, 6)))
    ab, ba = instance_metrics(a, b), instance_metrics(b, a)
    assert ab["voi_split"] == pytest.approx(ba["voi_merge"], abs=1e-12)
    assert ab["voi_merge"] == pytest.approx(ba["voi_split"], abs=1e-12)
    assert ab["are_precision"] == pytest.approx(ba["are_recall"], abs=1e-12)
    assert ab["adapted_rand"] == pytest.approx(ba["adapted_rand"], abs=1e-12)
    assert 0.0 <= ab["adapted_rand"] <= 1.0 and ab["voi_split"] >= 0.0 and ab["voi_merge"] >= 0.0


@settings(max_examples=40, **SETTINGS)
@given(
    data=st.data(),
    task=st.sampled_from(["semantic", "instance"]),
    pred_chunks=small_shapes,
    gt_chunks=small_shapes,
    block_bytes=st.sampled_from([1, 64, 2**20]),
)
def test_streamed_metrics_equal_whole_volume_metrics_for_any_chunking(data, task, pred_chunks, gt_chunks, block_bytes):
    gt = data.draw(label_volumes())
    if task == "semantic":
        pred = data.draw(arrays(np.float32, gt.shape, elements=st.floats(0, 1, width=32)))
    else:
        pred = data.draw(arrays(np.uint16, gt.shape, elements=st.integers(0, 9)))
    whole = evaluate(pred, gt, task)
    streamed = evaluate(Chunked(pred, pred_chunks), Chunked(gt, gt_chunks), task, block_bytes=block_bytes)
    np.testing.assert_equal(streamed, whole)


# ------------------------------------------------------------------------------------ targets --
offsets = st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)).filter(any)


@settings(max_examples=60, **SETTINGS)
@given(label=label_volumes(max_id=3), offs=st.lists(offsets, min_size=1, max_size=4))
def test_each_affinity_channel_is_same_object_at_its_offset(label, offs):
    affs = build_targets(label, [TargetConfig(name="affinity", offsets=[list(o) for o in offs])])
    for aff, o in zip(affs, offs):  # brute force: aff[v] = 1 iff label[v] == label[v - o] > 0, inside
        for v in np.ndindex(label.shape):
            u = tuple(a - b for a, b in zip(v, o))
            inside = all(0 <= i < n for i, n in zip(u, label.shape))
            assert aff[v] == float(inside and label[v] > 0 and label[v] == label[u]), (v, o)


# ----------------------------------------------------------------------------------------- io --
@settings(max_examples=25, **SETTINGS)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
    dtype=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64"]),
    chunks=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    formats=st.permutations(["a.zarr/img", "b.h5:img"]),
    voxel_size=st.tuples(*[st.floats(0.1, 100, allow_subnormal=False)] * 3),
    seed=st.integers(0, 2**16),
)
def test_multichannel_volumes_round_trip_bit_exact(tmp_path_factory, random_volume, write_volume, shape, dtype,
                                                   chunks, formats, voxel_size, seed):
    folder = tmp_path_factory.mktemp("4d")
    data = random_volume(shape, dtype, seed)
    src = write_volume(f"{folder}/{formats[0]}", data, chunks=chunks, voxel_size=voxel_size)
    convert(src, f"{folder}/{formats[1]}", chunks=chunks[::-1], progress=False)
    with open_volume(f"{folder}/{formats[1]}") as vol:
        assert vol.shape == shape and vol.dtype == data.dtype and vol[...].tobytes() == data.tobytes()
        assert vol.voxel_size == pytest.approx(voxel_size)


@settings(max_examples=30, **SETTINGS)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 12), st.integers(1, 12)),
    chunks=small_shapes,
    fmt=st.sampled_from(["out.zarr", "out.h5:pred"]),
    cut=st.floats(0, 1),
    order_seed=st.integers(0, 2**16),
)
def test_a_resumable_write_interrupted_anywhere_equals_one_write(tmp_path_factory, shape, chunks, fmt, cut,
                                                                order_seed):
    folder = tmp_path_factory.mktemp("resume")
    data = np.random.default_rng(order_seed).integers(0, 2**16, shape, dtype=np.uint16)
    blocks = list(iter_blocks(shape, chunks, 2, max_bytes=1))  # one chunk per block
    np.random.default_rng(order_seed).shuffle(blocks)  # a process writes its blocks in any order
    first, spec = int(cut * len(blocks)), f"{folder}/{fmt}"
    writer = create_volume(spec, shape, np.uint16, chunks=chunks, resumable=True)
    for sel in blocks[:first]:
        writer[sel] = data[sel]
    writer.flush()
    writer.suspend()  # the process stops here
    writer = create_volume(spec, shape, np.uint16, chunks=chunks, resumable=True)
    assert writer.resumed
    for sel in blocks[first:]:
        writer[sel] = data[sel]
    writer.commit()
    with open_volume(spec) as vol:
        assert vol[...].tobytes() == data.tobytes()
    assert sorted(p.name for p in folder.iterdir()) == [fmt.split(":")[0]]  # no partial store left


# ---------------------------------------------------------------------------------- inference --
@pytest.fixture(scope="module")
def tiny_net():
    # One thread: two OpenMP threads beside the reader/writer threads run several times slower on 2 cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(None, ["data.patch_size=[4,8,8]", "model.architecture=monai_unet", "model.filters=[2,4]",
                             "system.num_gpus=0"])
    torch.manual_seed(0)
    yield build_model(cfg.model).eval()
    torch.set_num_threads(before)


@settings(max_examples=25, **SETTINGS)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 30), st.integers(1, 30)),
    block=st.tuples(st.integers(2, 9), st.integers(6, 30), st.integers(6, 30)),
    overlap=st.sampled_from([0.0, 0.25, 0.5]),
    blending=st.sampled_from(["gaussian", "constant"]),
    seed=st.integers(0, 2**16),
)
def test_blocked_inference_matches_whole_volume_for_any_block(tiny_net, shape, block, overlap, blending, seed):
    from pytc.inference import predict_volume

    assume(any(b < s for b, s in zip(block, shape)))  # at least two blocks
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    common = ["data.patch_size=[4,8,8]", "model.architecture=monai_unet", "model.filters=[2,4]", "system.num_gpus=0",
              "inference.sw_batch_size=1", f"inference.overlap={overlap}", f"inference.blending={blending}"]
    blocked = load_config(None, [*common, f"inference.block_size={list(block)}"])
    whole = load_config(None, [*common, f"inference.block_size={list(shape)}"])
    a = predict_volume(tiny_net, image, blocked, device="cpu", progress=False)
    b = predict_volume(tiny_net, image, whole, device="cpu", progress=False)
    # The same window predictions, summed block by block: equal up to float32 rounding.
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6, np.abs(a - b).max()


# ------------------------------------------------------------------------------------- config --
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=60, **SETTINGS)
@given(
    seed=st.integers(0, 2**32 - 1),
    output_dir=st.none() | names,
    batch_size=st.integers(1, 1024),
    lr=st.floats(1e-12, 10, allow_subnormal=False),
    patch=st.lists(st.integers(1, 512), min_size=3, max_size=3),
    filters=st.lists(st.integers(1, 512), min_size=2, max_size=6),
    overlap=st.floats(0, 0.99),
    thresholds=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    precision=st.sampled_from(["32", "16-mixed", "bf16-mixed"]),
    train_image=st.none() | names | st.lists(names, max_size=3),
)
def test_a_config_survives_dump_and_load(tmp_path_factory, seed, output_dir, batch_size, lr, patch, filters, overlap,
                                         thresholds, precision, train_image):
    cfg = config_from_dict({
        "system": {"seed": seed, "output_dir": output_dir},
        "model": {"filters": filters},
        "data": {"batch_size": batch_size, "patch_size": patch, "train_image": train_image},
        "optimizer": {"lr": lr},
        "training": {"precision": precision},
        "inference": {"overlap": overlap},
        "decoding": {"merge_thresholds": thresholds},
    })
    text = dump_config(cfg)
    assert config_from_dict(yaml.safe_load(text)) == cfg
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == cfg
