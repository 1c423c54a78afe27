"""The bad-input catalogue: every mistake a user can make with a file or a config, through the real CLI.

Each case builds one broken input under ``tmp_path`` and runs the command a user would run. The
contract (docs/reliability.md): exit code 2, exactly one line ``Error: ...`` naming what is wrong
(the key words checked here), no traceback, and nothing left behind — no output, no temporary,
no run directory (checked by comparing the folder before and after). Library-level versions of
many of these live next to their modules (test_io, test_dataset, test_config, test_checkpoint);
this file proves the whole path from the command line to the message.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pytc.cli import app
from pytc.config import dump_config, load_config
from pytc.engine import checkpoint as ckpt
from pytc.io import create_volume
from pytc.models import build_model

runner = CliRunner()

# A 3-level U-Net with 4..16 features on 8×16×16 patches: building and failing costs milliseconds.
TINY = ["data.patch_size=[8,16,16]", "data.batch_size=1", "data.num_workers=0", "data.augment.enabled=false",
        "model.architecture=monai_unet", "model.filters=[4,8,16]", "system.num_cpus=1", "system.num_gpus=0",
        "training.max_steps=1", "inference.block_size=[8,16,16]", "inference.sw_batch_size=1"]
SHAPE = (12, 24, 24)


def _blobs(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[2:8, 4:12, 4:12], label[4:10, 14:22, 12:20] = 1, 2
    image = (rng.normal(60, 20, shape) + (label > 0) * 120).clip(0, 255).astype(np.uint8)
    return image, label


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> SimpleNamespace:
    """Good inputs every case may read (never writes into them): a volume file and a checkpoint."""
    root = tmp_path_factory.mktemp("shared")
    image, label = _blobs()
    h5 = root / "vol.h5"
    with h5py.File(h5, "w") as f:  # two datasets: a bare `vol.h5` is ambiguous on purpose
        f["raw"], f["label"] = image, label
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    folder = ckpt.save_checkpoint(root / "run" / ckpt.CHECKPOINT_DIR, 1, weights=build_model(cfg.model).state_dict(),
                                  config_yaml=dump_config(cfg), training_state={"step": 1}, meta={})
    return SimpleNamespace(root=root, h5=h5, raw=f"{h5}:raw", label=f"{h5}:label", ckpt=folder, image=image,
                           labels=label)


def _h5(path: Path, **arrays) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in arrays.items():
            f[name] = data
    return path


def _config(path: Path, s: SimpleNamespace, image: str | None = None, label: str | None = None,
            extra: str = "") -> Path:
    path.write_text(f"data:\n  train_image: {image or s.raw}\n  train_label: {label or s.label}\n{extra}")
    return path


def _train(p: Path, s, *overrides, image=None, label=None, extra: str = "") -> list:
    return ["train", _config(p / "cfg.yaml", s, image, label, extra), *TINY, *overrides, "--run-dir", p / "run"]


def _infer(p: Path, s, input: str, *more) -> list:
    return ["infer", "--ckpt", s.ckpt, "--input", input, "--output", p / "pred.zarr", *more]


def _copy_checkpoint(s, p: Path) -> Path:
    import shutil

    return Path(shutil.copytree(s.ckpt, p / "checkpoints" / s.ckpt.name))


class _Exploit:
    """A pickle that, if ever unpickled, creates ``marker`` (proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------- the cases --
# name -> builder(p, shared) returning (argv, key words of the one-line message). `p` is the test's
# own folder: broken inputs are created there and every output is aimed there.
CASES: dict = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


# Files and addresses (pytc convert reads exactly like every other command).
@case("missing file")
def _(p, s):
    return ["convert", p / "nope.h5", p / "out.zarr"], ["nope.h5", "does not exist"]


@case("directory instead of file")
def _(p, s):
    (p / "d.h5").mkdir()
    return ["convert", p / "d.h5", p / "out.zarr"], ["d.h5", "is a folder, not an HDF5 file"]


@case("directory instead of config file")
def _(p, s):
    (p / "cfg").mkdir()
    return ["train", p / "cfg", "--run-dir", p / "run"], ["is a directory", "YAML config file"]


@case("unknown extension")
def _(p, s):
    (p / "vol.nii").write_bytes(b"\0" * 352)
    return ["convert", p / "vol.nii", p / "out.zarr"], ["cannot tell the format", ".nii is not supported"]


@case("hdf5 with several datasets and no key")
def _(p, s):
    return ["convert", s.h5, p / "out.zarr"], ["holds several datasets", "label, raw", "name one as"]


@case("missing dataset key")
def _(p, s):
    return ["convert", f"{s.h5}:volumes/raw", p / "out.zarr"], ["no such dataset", "it holds: label, raw"]


@case("truncated hdf5")
def _(p, s):
    data = s.h5.read_bytes()
    (p / "cut.h5").write_bytes(data[: len(data) // 3])
    return ["convert", p / "cut.h5", p / "out.zarr"], ["not a readable HDF5 file", "truncated"]


@case("corrupted hdf5 chunk")
def _(p, s):  # the header is fine, a compressed chunk is garbage: found only while copying
    path = p / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=s.image, chunks=(4, 24, 24), compression="gzip")
        offset = f["raw"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 64)
    return ["convert", f"{path}:raw", p / "out.zarr"], ["cannot read", "bad.h5:raw"]


@case("truncated tiff")
def _(p, s):
    with create_volume(p / "t.tif", SHAPE, np.uint8, compression="gzip") as out:
        out[...] = s.image
    data = (p / "t.tif").read_bytes()
    (p / "t.tif").write_bytes(data[: len(data) // 2])
    return ["convert", p / "t.tif", p / "out.zarr"], ["t.tif", "truncated"]


@case("corrupted tiff")
def _(p, s):
    (p / "c.tif").write_bytes(b"II*\x00" + os.urandom(200))
    return ["convert", p / "c.tif", p / "out.zarr"], ["c.tif", "not a readable TIFF"]


@case("empty tiff folder")
def _(p, s):
    (p / "slices").mkdir()
    (p / "slices" / "notes.txt").write_text("no images here")
    return ["convert", f"{p / 'slices'}/", p / "out.zarr"], ["holds no .tif/.tiff/.png slices"]


# Volumes that do not fit the model or each other.
@case("2D image where 3D is needed: infer")
def _(p, s):
    _h5(p / "flat.h5", raw=s.image[0])
    return _infer(p, s, f"{p / 'flat.h5'}:raw"), ["shape (24, 24)", "a 2D image, but the model is 3D"]


@case("2D image where 3D is needed: train")
def _(p, s):
    _h5(p / "flat.h5", raw=s.image[0], label=s.labels[0])
    flat = f"{p / 'flat.h5'}"
    return _train(p, s, image=f"{flat}:raw", label=f"{flat}:label"), ["shape (24, 24)", "expected (Z, Y, X)"]


@case("4D image with channels, config says 1: train")
def _(p, s):
    _h5(p / "c.h5", raw=np.stack([s.image, s.image]))
    return _train(p, s, image=f"{p / 'c.h5'}:raw"), ["2 channels", "model.in_channels is 1"]


@case("4D image with channels, config says 1: infer")
def _(p, s):
    _h5(p / "c.h5", raw=np.stack([s.image, s.image]))
    return _infer(p, s, f"{p / 'c.h5'}:raw"), ["shape (2, 12, 24, 24)", "takes 1 channel"]


@case("image/label shape mismatch")
def _(p, s):
    _h5(p / "l.h5", label=s.labels[:, :20])
    return _train(p, s, label=f"{p / 'l.h5'}:label"), ["has shape (12, 24, 24)", "(12, 20, 24)", "voxel for voxel"]


@case("label with negative values")
def _(p, s):
    _h5(p / "l.h5", label=s.labels.astype(np.int16) - 1)
    return _train(p, s, label=f"{p / 'l.h5'}:label"), ["negative values (min -1)"]


@case("float labels: train")
def _(p, s):
    _h5(p / "l.h5", label=s.labels.astype(np.float32) * 0.5)
    return _train(p, s, label=f"{p / 'l.h5'}:label"), ["float32 with non-integral values", "integer ids"]


@case("float labels: evaluate instance")
def _(p, s):
    _h5(p / "gt.h5", gt=s.labels.astype(np.float32) * 0.5)
    return (["evaluate", s.label, f"{p / 'gt.h5'}:gt", "--task", "instance", "--json", p / "m.json"],
            ["non-integral values", "integer labels"])


@case("probabilities evaluated as instances")
def _(p, s):
    _h5(p / "prob.h5", prob=np.random.default_rng(0).random(SHAPE, np.float32))
    return (["evaluate", f"{p / 'prob.h5'}:prob", s.label, "--task", "instance", "--json", p / "m.json"],
            ["non-integral values", "pytc decode"])


@case("patch larger than the volume")
def _(p, s):
    return _train(p, s, "data.patch_size=[16,32,32]"), ["data.patch_size [16, 32, 32] is larger than", "at most"]


@case("NaN voxels in a float input: infer")
def _(p, s):
    image = s.image.astype(np.float32) / 255
    image[5, 6, 7] = np.nan
    _h5(p / "nan.h5", raw=image)
    return _infer(p, s, f"{p / 'nan.h5'}:raw"), ["NaN or infinite", "(5, 6, 7)"]


@case("Inf voxels in a float input: train")
def _(p, s):
    image = s.image.astype(np.float32) / 255
    image[3, 2, 1] = np.inf
    _h5(p / "inf.h5", raw=image)
    return _train(p, s, image=f"{p / 'inf.h5'}:raw"), ["NaN or infinite", "(3, 2, 1)"]


@case("NaN voxels in a float prediction: evaluate")
def _(p, s):
    prob = (s.labels > 0).astype(np.float32)
    prob[0, 0, 0] = np.nan
    _h5(p / "prob.h5", prob=prob)
    return (["evaluate", f"{p / 'prob.h5'}:prob", s.label, "--json", p / "m.json"],
            ["NaN or infinite"])


# Configs.
@case("missing config file")
def _(p, s):
    return ["train", p / "nope.yaml", "--run-dir", p / "run"], ["nope.yaml not found"]


@case("out_channels inconsistent with the targets")
def _(p, s):
    return _train(p, s, "model.out_channels=3"), ["model.out_channels is 3", "1"]


@case("unknown architecture")
def _(p, s):
    return (_train(p, s, "model.architecture=monai_unett"),
            ["unknown model.architecture 'monai_unett'", "did you mean 'monai_unet'"])


@case("unknown loss")
def _(p, s):
    return (_train(p, s, "model.loss_functions=[DiceLos]", "model.loss_weights=[1]"),
            ["unknown loss 'DiceLos'", "did you mean 'DiceLoss'"])


@case("misspelt config key")
def _(p, s):
    return _train(p, s, extra="  batch_sise: 2\n"), ["data.batch_sise: unknown key", "did you mean data.batch_size"]


@case("wrong type")
def _(p, s):
    return _train(p, s, extra="  foreground_fraction: lots\n"), ["data.foreground_fraction", "got 'lots'"]


@case("_base_ cycle")
def _(p, s):
    (p / "a.yaml").write_text("_base_: b.yaml\n")
    (p / "b.yaml").write_text("_base_: a.yaml\n")
    return ["train", p / "a.yaml", "--run-dir", p / "run"], ["_base_ cycle: a.yaml -> b.yaml -> a.yaml"]


@case("override of a non-existent key")
def _(p, s):
    return _train(p, s, "training.max_step=5"), ["training.max_step: unknown key", "did you mean training.max_steps"]


@case("yaml with python object tags")
def _(p, s):
    (p / "evil.yaml").write_text(f'model: !!python/object/apply:os.system ["touch {p / "PWNED"}"]\n')
    return ["train", p / "evil.yaml", "--run-dir", p / "run"], ["Python object tags are not allowed"]


# Checkpoints.
@case("missing checkpoint")
def _(p, s):
    return ["infer", "--ckpt", p / "nope", "--input", s.raw, "--output", p / "pred.zarr"], ["nope not found"]


@case("a folder that is not a checkpoint")
def _(p, s):
    (p / "walk").mkdir()
    return ["infer", "--ckpt", p / "walk", "--input", s.raw, "--output", p / "pred.zarr"], [
        "walk is not a checkpoint or run folder (no checkpoints/, config.yaml or model.safetensors)"]


@case("best checkpoint of a run that never validated")
def _(p, s):
    ckpts = _copy_checkpoint(s, p).parent
    ckpt.write_pointer(ckpts, "last", ckpts / s.ckpt.name)
    return ["infer", "--ckpt", ckpts / "best", "--input", s.raw, "--output", p / "pred.zarr"], [
        "no best checkpoint", f"use {ckpts / 'last'} or {p}"]


@case("validation image without its label")
def _(p, s):
    return _train(p, s, f"data.val_image={s.raw}"), ["val_image is set but val_label is not", "data.val_image=null"]


@case("a validation volume that does not exist")
def _(p, s):
    return _train(p, s, f"data.val_image={p / 'val.zarr'}", f"data.val_label={p / 'val.zarr'}"), [
        f"data.val_image: {p / 'val.zarr'} does not exist; check the path or set data.val_image=null"]


@case("synth with an empty shape")
def _(p, s):
    return ["demo", "synth", p / "s.h5", "--shape", "0", "8", "8"], ["every size must be at least 1"]


@case("list-archs pattern that matches nothing")
def _(p, s):
    return ["list-archs", "zzz"], ["no architecture matches 'zzz'; the names are", "monai_unet"]


@case("checkpoint from a different architecture: infer")
def _(p, s):
    folder = _copy_checkpoint(s, p)
    (folder / ckpt.CONFIG).write_text(dump_config(load_config(None, [*TINY, "model.filters=[8,16,32]"])))
    return _infer(p, s, s.raw)[:2] + [folder] + _infer(p, s, s.raw)[3:], ["does not fit this model", "shape mismatch"]


@case("checkpoint from a different architecture: resume")
def _(p, s):
    folder = _copy_checkpoint(s, p)
    return _train(p, s, "model.filters=[8,16,32]")[:-2] + ["--run-dir", p / "run", "--resume", folder], [
        "cannot resume", "other model settings"]


@case("checkpoint config with python object tags")
def _(p, s):
    folder = _copy_checkpoint(s, p)
    (folder / ckpt.CONFIG).write_text(f'model: !!python/object/apply:os.system ["touch {p / "PWNED"}"]\n')
    return ["infer", "--ckpt", folder, "--input", s.raw, "--output", p / "pred.zarr"], [
        "Python object tags are not allowed"]


@case("pickle with code as the training state")
def _(p, s):
    folder = _copy_checkpoint(s, p)
    torch.save({"format": ckpt.STATE_FORMAT, "step": 1, "payload": _Exploit(p / "PWNED")}, folder / ckpt.STATE)
    return _train(p, s)[:-2] + ["--run-dir", p / "run", "--resume", folder], [
        "refusing to load", "it was not executed"]


@case("pickle with code as the weights")
def _(p, s):
    folder = _copy_checkpoint(s, p)
    (folder / ckpt.WEIGHTS).write_bytes(pickle.dumps({"w": _Exploit(p / "PWNED")}))
    return ["infer", "--ckpt", folder, "--input", s.raw, "--output", p / "pred.zarr"], [
        "cannot read weights", "not safetensors"]


@case("zarr array with a pickle codec")
def _(p, s):  # zarr v2 object arrays unpickle their chunks: the store is refused before any chunk is read
    import json

    store = p / "evil.zarr"
    store.mkdir()
    (store / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": None, "fill_value": None,
        "order": "C", "filters": [{"id": "pickle", "protocol": 4}]}))
    chunk = np.empty(1, dtype=object)
    chunk[0] = _Exploit(p / "PWNED")
    (store / "0").write_bytes(pickle.dumps(chunk))
    return ["convert", store, p / "out.h5"], ["evil.zarr has Zarr metadata pytc cannot read", "pickle"]


@case("torch.save file as the weights")
def _(p, s):
    folder = _copy_checkpoint(s, p)
    torch.save({"w": _Exploit(p / "PWNED")}, folder / ckpt.WEIGHTS)  # what a .pt/.pth checkpoint looks like
    return ["infer", "--ckpt", folder, "--input", s.raw, "--output", p / "pred.zarr"], [
        "cannot read weights", "not safetensors"]


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (folders as -1)."""
    return {str(q.relative_to(root)): (q.stat().st_size if q.is_file() else -1) for q in root.rglob("*")}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(name, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command writing into the working directory would show up too
    argv, words = CASES[name](tmp_path, shared)
    before = _tree(tmp_path)
    result = runner.invoke(app, [str(a) for a in argv])
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before, "the failed command left files behind"
    assert not (tmp_path / "PWNED").exists(), "a payload in the input was executed"


def test_the_exploit_payload_would_run_if_unpickled(tmp_path):
    """Control for the pickle cases: the same payload does create the marker when unpickled."""
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "PWNED")))
    assert (tmp_path / "PWNED").exists()


def test_yaml_payload_would_run_under_an_unsafe_loader(tmp_path):
    """Control for the YAML cases: the tag is a real payload for yaml.unsafe_load."""
    import yaml

    yaml.unsafe_load(f'model: !!python/object/apply:os.system ["touch {tmp_path / "PWNED"}"]\n')
    assert (tmp_path / "PWNED").exists()


def test_all_background_labels_warn_and_train(shared, tmp_path):
    """All-background labels are legal (an empty region of a dataset): a warning, then training."""
    _h5(tmp_path / "empty.h5", label=np.zeros(SHAPE, np.uint8))
    argv = _train(tmp_path, shared, "--fast-dev-run", label=f"{tmp_path / 'empty.h5'}:label")
    with pytest.warns(UserWarning, match="has no labelled voxels"):
        result = runner.invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "Run directory:" in result.output
    assert ckpt.resolve_checkpoint(tmp_path / "run").name == "step-000001"


def test_errors_in_a_real_process_are_one_line_without_traceback(shared, tmp_path):
    """Three representative cases through `python -m pytc.cli` itself (stderr as a user sees it)."""
    import subprocess
    import sys

    picks = ["hdf5 with several datasets and no key", "misspelt config key", "pickle with code as the weights"]
    for name in picks:
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        argv, words = CASES[name](folder, shared)
        proc = subprocess.run([sys.executable, "-m", "pytc.cli", *map(str, argv)], capture_output=True, text=True,
                              timeout=120, cwd=folder)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout and not (folder / "PWNED").exists()
