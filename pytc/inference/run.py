"""``pytc infer``: checkpoint + input volume → a resumable, multi-process prediction store.

:func:`infer` loads the checkpoint and its config once (with the overrides and ``PYTC_`` variables
applied), checks everything it can before any output exists, then predicts block by block through
:class:`pytc.inference.predictor.BlockPredictor` into ``.<output>.pytc-partial`` beside the output.
Every finished block is marked in the store's record folder (:mod:`pytc.inference.record`) and the
store is renamed into place only when all blocks are done. Rerun with the same arguments, it skips
the finished blocks; a partial store written with another checkpoint, input (its contents: see
:func:`pytc.inference.record.input_identity`) or config is refused, naming what changed
(``resume=False``, ``--restart``, starts it over).

Processes started by ``accelerate launch`` (``WORLD_SIZE`` > 1) share the blocks in contiguous runs
(rank ``r`` of ``W`` takes blocks ``r·n/W`` up to ``(r+1)·n/W``) and write into one Zarr store whose
chunks divide the block; rank 0 prepares the store and renames it at the end. A block whose
neighbour was predicted by another process or an earlier run recomputes that neighbour's windows
reaching into it, in the neighbour's own batches, so the output is the same however the blocks were
shared or resumed (bit for bit on CPU; on GPU each process lets cuDNN pick its kernels, so expect
float rounding differences).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from typing import Optional

from pytc.errors import ConfigError, OutputExistsError, VolumeError
from pytc.inference import record, store
from pytc.inference.checks import check_input_values, check_output_dtype, check_weights, check_window_fits
from pytc.inference.grid import output_chunks
from pytc.inference.predictor import BlockPredictor, run_blocks

log = logging.getLogger("pytc")


def infer(ckpt: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike,
          overrides: Optional[list[str]] = None, force: bool = False, progress: bool = True,
          resume: bool = True, dtype: Optional[str] = None) -> dict:  # fmt: skip
    """Predict a volume file with a checkpoint and write a prediction store (resumable, multi-process).

    Args:
        ckpt: Checkpoint folder, ``last``/``best`` pointer or run directory; its ``config.yaml``
            is the config.
        input: Volume address (``raw.h5:main``, ``raw.zarr``, ``stack.tif``, ...).
        output: ``out.zarr`` (default format; a path without suffix gets ``.zarr``),
            ``out.zarr/array`` or ``out.h5:dataset``. Attributes: see "Prediction stores" in
            docs/architecture.md.
        overrides: ``section.key=value`` strings applied on top of the checkpoint's config
            (``inference.*`` — ``inference.precision`` among them — ``system.*``, ...). ``model.*``
            and a ``data.patch_size`` that would resize the network are refused, whether set here or
            by a ``PYTC_`` variable: the checkpoint's weights fix the network.
        force: Replace an existing output.
        progress: Show a progress bar (rank 0, terminals only).
        resume: Reuse the finished blocks of an interrupted run with the same arguments (a partial
            store written with another input, checkpoint or config is refused); False discards them.
        dtype: ``uint8``, ``float16`` or ``float32``: sets ``inference.output_dtype`` (recorded in
            the store's ``pytc_config``).

    Returns:
        Summary: ``output, shape, dtype, channels, blocks, blocks_skipped`` (finished by an earlier
        run), ``blocks_computed`` (by this process), ``windows`` (of the whole-volume grid),
        ``windows_computed`` (network evaluations by this process: each window once, plus the
        partial sums recomputed at the edges of its share), ``processes, rank, restarted`` (a partial store
        without a record of its arguments was discarded), ``device, precision, tta`` (passes per window),
        ``seconds`` and ``voxels_per_s`` (voxels predicted by all processes per second, end to end).

    Raises:
        OutputExistsError: the output exists and ``force`` is False.
        CheckpointError / ConfigError / VolumeError / DataError: bad checkpoint (also NaN weights),
            override (also a window too large for memory), input (also values beyond the compute
            dtype) or output (one line each); a non-finite prediction, naming its block.
        VolumeError: a partial store of this output was written with another input, checkpoint or
            config (naming which; ``resume=False`` starts over), or the disk is full.
        LockedError: another process is writing this output (checked before the model is loaded).
    """
    from pytc.choices import OutputDtype
    from pytc.config import load_config_with_sources
    from pytc.data.volumes import normalization_stats
    from pytc.engine.checkpoint import CONFIG, load_model, resolve_checkpoint
    from pytc.io import check_not_input, check_writable, create_volume, disk_errors, open_volume, output_exists, parse_spec
    from pytc.runtime import Dist, setup_threads

    start = time.perf_counter()
    out_spec = store.output_spec(output)
    check_not_input(out_spec, [input])  # --force must never replace the volume being predicted
    if not force and output_exists(out_spec):
        raise OutputExistsError(f"{out_spec} exists; pass --force to overwrite")
    check_writable(parse_spec(out_spec).path)  # before the model is loaded and the input scanned
    store.check_output_free(out_spec)  # likewise: a second run of an output being written stops here
    folder = resolve_checkpoint(ckpt)
    cfg, sources = load_config_with_sources(folder / CONFIG, overrides)  # the checkpoint's config, once
    changed_model = [key for key in sources if key.startswith("model.")]
    if changed_model:
        raise ConfigError(f"model.* settings come from the checkpoint (its weights fix the network); drop the "
                          f"{sources[changed_model[0]]}")
    if "data.patch_size" in sources and cfg.model.input_size == list(cfg.data.patch_size):
        raise ConfigError(f"data.patch_size sizes the checkpoint's network; drop the {sources['data.patch_size']} "
                          "and set inference.window_size for another window")
    if dtype is not None:
        cfg.inference = cfg.inference.model_copy(update={"output_dtype": OutputDtype(dtype)})
    model = load_model(folder, cfg.model)
    check_weights(model, folder)
    out_dtype = check_output_dtype(cfg.inference.output_dtype, cfg.data.targets)
    check_window_fits(cfg)
    if parse_spec(out_spec).format == "hdf5":
        codec = store.h5_codec(cfg.inference.compression, explicit="inference.compression" in sources)
        cfg.inference = cfg.inference.model_copy(update={"compression": codec})
    dist = Dist(cfg.system.num_gpus)
    if dist.world > 1 and parse_spec(out_spec).format != "zarr":
        raise VolumeError(f"{dist.world} processes write one store side by side only in Zarr; give a .zarr output")
    setup_threads(max(1, cfg.system.num_cpus // dist.world))  # processes share the machine's cores
    if dist.device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # fixed window size: let cuDNN pick its fastest kernels

    with open_volume(input) as vol:
        predictor = BlockPredictor(model, vol, cfg, dist.device, stats=None, name=f"input {vol.spec}")  # stats: below
        check_input_values(vol, f"input {vol.spec}", cfg.data.normalize, predictor.precision)  # before any output
        plan = predictor.plan
        if any(b < min(w, n) for b, w, n in zip(plan.block, plan.window, plan.shape)) and dist.rank == 0:
            log.warning(f"inference.block_size {list(plan.block)} is smaller than the window {list(plan.window)}: "
                        "each block hands most of its windows' sums to its neighbours (slow, many small files); "
                        "use blocks at least the window")
        chunks = (1, *output_chunks(predictor.plan.block, predictor.plan.shape))
        layout = dict(shape=predictor.out_shape, dtype=out_dtype, chunks=chunks, compression=cfg.inference.compression,
                      voxel_size=vol.voxel_size, force=force, resumable=True)
        fingerprint = record.fingerprint(folder, vol, cfg, layout)
        writer, restarted = None, False
        try:
            if dist.rank == 0:  # prepare the partial store: reuse it, or start it over
                writer = create_volume(out_spec, **layout)  # holds the output's lock: a second run stops here
                run = record.read_run(writer) if writer.resumed else None
                if run is not None and resume and record.changed(run, fingerprint):
                    # Its blocks would be mixed into this output: refuse, and let the user choose.
                    done_before = sum(1 for p in (writer.record_dir / record.DONE_DIR).glob("[0-9]*"))
                    record.refuse_changed(writer, record.changed(run, fingerprint), vol.spec, done_before)
                if writer.resumed and (not resume or run is None):
                    restarted = resume
                    if resume:
                        log.warning(f"{writer.partial_path} has no record of its arguments; starting it over")
                    writer.abort()
                    writer, run = create_volume(out_spec, **layout), None
                if run is None:
                    with disk_errors(out_spec):
                        writer.set_attrs(store.store_attrs(cfg, predictor.kinds, vol, out_dtype))
                        (writer.record_dir / record.DONE_DIR).mkdir(exist_ok=True)
                    stats = normalization_stats(vol, cfg.data.normalize)  # of the whole input, once
                    run = {"fingerprint": fingerprint, "stats": None if stats is None else list(stats),
                           "blocks": len(predictor.plan)}
                    record.write_run(writer, run)
            dist.barrier()
            if dist.rank != 0:  # open the store rank 0 prepared (and holds the output's lock for)
                writer = create_volume(out_spec, **layout, lock=False)
                run = record.read_run(writer)
                if not writer.resumed or run is None or run["fingerprint"] != fingerprint:
                    raise RuntimeError(f"rank {dist.rank} found no prepared store at {writer.partial_path}")
            predictor.stats = tuple(run["stats"]) if run["stats"] is not None else None  # rank 0's, once
            done_dir = writer.record_dir / record.DONE_DIR
            done = {int(p.name) for p in done_dir.iterdir() if p.name.isdigit()}
            n = len(predictor.plan)  # each process takes a contiguous run of blocks: most carries stay in it
            mine = [i for i in range(dist.rank * n // dist.world, (dist.rank + 1) * n // dist.world) if i not in done]
            scratch = writer.record_dir / record.CARRY_DIR / f"rank{dist.rank}"
            shutil.rmtree(scratch, ignore_errors=True)  # carries of an interrupted run are not reused

            def mark(i: int) -> None:
                with disk_errors(out_spec):  # HDF5 writes its buffered chunks here
                    writer.flush()  # the block's data is durable before it is marked finished
                    record.mark_done(done_dir, i)

            run_blocks(predictor, mine, writer, progress and dist.rank == 0, on_done=mark, dtype=out_dtype,
                        scratch=scratch)
            dist.barrier()
            if dist.rank == 0:
                missing = len(predictor.plan) - sum(1 for p in done_dir.iterdir() if p.name.isdigit())
                if missing:
                    raise RuntimeError(f"{missing} block(s) of {writer.partial_path} are not marked finished")
                writer.commit()
            dist.barrier()  # every process returns once the output has its final name
        finally:
            if writer is not None:
                with disk_errors(out_spec):  # closing flushes what HDF5 still buffers
                    writer.suspend()  # keeps the finished blocks after an error; nothing after a commit

    seconds = time.perf_counter() - start
    todo = [i for i in range(len(predictor.plan)) if i not in done]  # by all processes
    voxels = sum(math.prod(s.stop - s.start for s in predictor.plan.core(i)) for i in todo)
    return {
        "output": out_spec, "shape": list(predictor.out_shape), "dtype": str(out_dtype), "channels": predictor.kinds,
        "blocks": len(predictor.plan), "blocks_skipped": len(done), "blocks_computed": len(mine),
        "windows": predictor.plan.count_windows(), "windows_computed": predictor.windows_run,
        "processes": dist.world, "rank": dist.rank, "restarted": restarted, "device": str(dist.device),
        "precision": predictor.precision, "tta": len(predictor.augs), "seconds": round(seconds, 3),
        "voxels_per_s": float(voxels / seconds) if seconds > 0 else 0.0,
    }
