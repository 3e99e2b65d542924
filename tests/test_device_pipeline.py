"""The device pipelines' logic on the CPU (where the stages run eagerly): host resize equals the numpy
Preprocessor bit for bit, an end-to-end pipeline finds what the staged stages find, and a throughput
pipeline returns each batch's faces one call later, in order. The CUDA paths run on the GPU machine."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from backends.base import backend_class
from retinabench.graph.torch_module import to_torch
from retinabench.model.device.pipelined import PipelinedStages, Slot
from retinabench.model.device.preprocess import DevicePreprocessor
from retinabench.model.family import get_family
from retinabench.model.preprocess import Preprocessor
from tolerance import THREADS

SIZE = (640, 448)


@pytest.mark.parametrize("family", ["insightface", "biubug6"])
def test_host_resize_is_the_numpy_preprocessor_bit_for_bit(family, t1_image):
    norm = get_family(family).normalization
    want, metas = Preprocessor(norm, "fit", SIZE)([t1_image, t1_image[:, ::-1].copy()])
    target = torch.zeros(want.shape, dtype=torch.float32)
    got, got_metas = DevicePreprocessor(target, norm, "fit", SIZE, compile_stage=False, host_resize=True)(
        [t1_image, t1_image[:, ::-1].copy()])
    np.testing.assert_array_equal(got.numpy(), want)
    assert got_metas == metas


def test_unknown_upload_is_refused(t1_image):
    with pytest.raises(Exception, match="upload 'dma'"):
        DevicePreprocessor(torch.zeros((1, 3, 448, 640)), get_family("insightface").normalization, "fit", SIZE,
                           upload="dma")


def test_upload_chunk_below_one_is_refused():
    with pytest.raises(Exception, match="upload_chunk 0"):
        DevicePreprocessor(torch.zeros((1, 3, 448, 640)), get_family("insightface").normalization, "fit", SIZE,
                           upload_chunk=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned upload runs on a CUDA device only")
@pytest.mark.parametrize("chunk", [2, 3, 8])
def test_upload_chunk_uploads_the_same_batch(t1_image, chunk):
    """Images per transfer change how the batch travels, not what arrives: chunks of 2, 3 (one left
    over) and more than the batch give the blob of one image per transfer, bit for bit."""
    norm = get_family("insightface").normalization
    images = [t1_image, t1_image[:, ::-1].copy(), np.ascontiguousarray(t1_image[::-1]), t1_image]
    blobs = []
    for c in (1, chunk):
        target = torch.zeros((len(images), 3, SIZE[1], SIZE[0]), device="cuda")
        got, _ = DevicePreprocessor(target, norm, "fit", SIZE, compile_stage=False, upload_chunk=c)(images)
        blobs.append(got.cpu().numpy())
    np.testing.assert_array_equal(blobs[0], blobs[1])


def _slot(mnet25, family, batch: int):
    torch.set_num_threads(THREADS)
    module = to_torch(mnet25.graph()).eval()
    target = torch.zeros((batch, 3, SIZE[1], SIZE[0]))
    pre = DevicePreprocessor(target, family.normalization, "fit", SIZE, compile_stage=False)

    def run_model():
        with torch.inference_mode():
            return dict(zip(module.output_names, module(target)))
    post = family.make_device_decoder(list(module.output_names), 0.8)
    return Slot(pre, run_model, None, post), module


def _boxes(faces):
    return [np.round(f.boxes, 1).tolist() for f in faces]


def test_end_to_end_and_throughput_pipelines_return_the_staged_faces_in_order(mnet25, t1_image):
    family = get_family("insightface")
    a, b = t1_image, t1_image[:, ::-1].copy()                   # three batches whose faces differ
    c = (t1_image * 0.7).astype(np.uint8)
    slot, module = _slot(mnet25, family, 1)
    staged = {}  # the same device stages called one after another, each waited for
    for name, img in (("a", a), ("b", b), ("c", c)):
        _, metas = slot.pre([img])
        staged[name] = _boxes(slot.post(slot.run_model(), metas))
    assert staged["a"] != staged["b"] != staged["c"] != staged["a"] and all(staged.values())

    e2e = PipelinedStages([slot], depth=1)
    for name, img in (("a", a), ("b", b), ("c", c)):
        faces, times = e2e.step([img])
        assert _boxes(faces) == staged[name] and times == (0.0, 0.0, 0.0)

    slots = [_slot(mnet25, family, 1)[0], _slot(mnet25, family, 1)[0]]
    tput = PipelinedStages(slots, depth=2)
    got = [_boxes(tput.step([img])[0]) for img in (a, b, c, a)]
    assert got == [[], staged["a"], staged["b"], staged["c"]]   # each call returns the batch before it
    tput.drain()
    assert tput.pending is None and _boxes(slots[1].post.collect(slots[1].outputs, slots[1].metas)) == staged["a"]


def test_build_fills_the_pipeline_without_recording_times(mnet25, t1_image):
    family = get_family("insightface")
    tput = PipelinedStages([_slot(mnet25, family, 1)[0], _slot(mnet25, family, 1)[0]], depth=2)
    assert tput.build([t1_image]) > 0 and tput.calls == 0 and tput.pending is not None
    assert tput.metrics()["postprocess_host_fallbacks"] == 0


def test_torch_cpu_variants_as_experts_run_them_agree_with_the_parity_row(mnet25, t1_image):
    from tolerance import assert_all_close, output_chain_lengths
    blob, _ = Preprocessor(get_family("insightface").normalization, "fit", SIZE)([t1_image])
    outs = {}
    for variant in ("default", "channels-last"):
        be = backend_class("torch")(variant=variant, threads=THREADS)
        be.load(mnet25, 1, blob.shape[2], blob.shape[3])
        outs[variant] = be.infer(blob.copy())
        assert be.settings().precision == "f32"
    assert_all_close(outs["channels-last"], outs["default"], output_chain_lengths(mnet25.graph(), blob.shape),
                     "channels-last vs default")
    for variant in ("pipe-compile-e2e", "pipe-compile-tput", "pipe-compile-hostresize"):
        with pytest.raises(Exception, match="needs a CUDA device"):
            backend_class("torch")(variant=variant).load(mnet25, 1, blob.shape[2], blob.shape[3])
    with pytest.raises(Exception, match="is a CPU variant"):
        backend_class("torch")(variant="channels-last", device="cuda").load(mnet25, 1, 448, 640)
