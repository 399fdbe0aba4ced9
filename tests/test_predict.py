"""Overlap-tile prediction, in memory and chunked over stores: independent of the
block size, equal to whole-image inference, resumable after SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from unetpipe.cli import main
from unetpipe.core.cluster import Execution
from unetpipe.core.errors import ConfigError, InputError
from unetpipe.io import ngff
from unetpipe.io.images import read_image, write_ome_zarr
from unetpipe.io.resume import DONE_DIR, partial_path
from unetpipe.nn.checkpoint import FORMAT, VERSION, save_checkpoint
from unetpipe.nn.model import UNet
from unetpipe.nn.tiles import mirror_index, predict_array, tiling
from unetpipe.stages.predict import MODEL_LOADS, _skip_level, predict_store

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def trained_looking(model):
    """Random BatchNorm statistics, so eval mode is not the identity."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_2d_result_does_not_depend_on_the_block(padding):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=4, padding=padding, norm="batch"))
    image = np.random.default_rng(0).random((1, 75, 61)).astype(np.float32)
    whole = predict_array(model, image, block=(200, 200))
    assert whole.shape == (2, 75, 61) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(0), 1, atol=1e-5)
    for block in [(16, 16), (24, 40), (36, 28)]:
        tiled = predict_array(model, image, block=block, batch_size=3)
        assert np.abs(tiled - whole).max() <= 1e-4, block


def test_3d_anisotropic_with_channels():
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=3, in_channels=2, out_channels=3, depth=2, features=2,
                                 pooling=[(1, 2, 2), (2, 2, 2)], norm="batch"))
    image = np.random.default_rng(1).random((2, 13, 30, 27)).astype(np.float32)
    whole = predict_array(model, image, block=(64, 64, 64))
    assert whole.shape == (3, 13, 30, 27)
    for block in [(4, 8, 8), (6, 12, 16), (2, 20, 8)]:
        tiled = predict_array(model, image, block=block, batch_size=2)
        assert np.abs(tiled - whole).max() <= 1e-4, block


def test_same_padding_whole_window_is_the_network_on_the_mirrored_image():
    torch.manual_seed(0)
    model = UNet(ndim=2, depth=2, features=3).eval()
    image = np.random.default_rng(2).random((1, 32, 32)).astype(np.float32)
    block, window, offset = tiling(model.config, (32, 32), block=(32, 32))
    assert block == (32, 32) and window == (32 + 2 * offset[0],) * 2
    padded = np.pad(image, [(0, 0), (offset[0],) * 2, (offset[1],) * 2], mode="reflect")
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(padded[None])), 1)[0].numpy()
    ref = ref[:, offset[0]:offset[0] + 32, offset[1]:offset[1] + 32]
    np.testing.assert_allclose(predict_array(model, image), ref, atol=1e-6)


def test_tiling_halo_covers_the_receptive_field_on_the_pooling_grid():
    model = UNet(ndim=2, depth=3, features=2)
    block, _, offset = tiling(model.config, (1000, 1000), block=(100, 130))
    f = model.pooling_factor()
    assert all(b % p == 0 for b, p in zip(block, f, strict=True))
    assert all(o % p == 0 and 2 * o >= r - 1
               for o, p, r in zip(offset, f, model.receptive_field(), strict=True))
    assert block == (104, 136)


def test_bad_images_are_refused():
    model = UNet(ndim=2, depth=1, features=2)
    with pytest.raises(ValueError, match="channel"):
        predict_array(model, np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="spatial"):
        predict_array(model, np.zeros((1, 4, 16, 16), np.float32))


# --- chunked prediction of a store ---------------------------------------------------



def save_model(model, path, *, mode="three_class", spacing=None):
    """A checkpoint as training writes it, for a given network."""
    cfg = model.config
    save_checkpoint({
        "format": FORMAT, "version": VERSION, "iteration": 1,
        "model": {"class": "UNet", "config": cfg, "state_dict": model.state_dict()},
        "targets": {"mode": mode},
        "data": {"ndim": cfg["ndim"], "channels": cfg["in_channels"],
                 "spacing": spacing or [1.0] * cfg["ndim"], "unit": None},
    }, path)
    return path


def probabilities(path):
    return np.asarray(zarr.open_array(os.path.join(path, "0"), mode="r")[...])


def test_mirror_index_is_numpy_reflect_padding():
    for n, before, after in [(5, 3, 2), (5, 13, 17), (2, 5, 4), (1, 3, 3), (7, 0, 0)]:
        axis = np.arange(n)
        expected = np.pad(axis, (before, after), mode="reflect" if n > 1 else "edge")
        np.testing.assert_array_equal(mirror_index(-before, n + before + after, n), expected)


CASES = [
    # ndim, padding, channels (None = a store without a channel axis), shape, blocks
    (2, "same", None, (75, 61), [(16, 16), (24, 40), (36, 28)]),
    (2, "valid", 2, (75, 61), [(16, 16), (24, 40), (36, 28)]),
    (2, "same", 2, (50, 83), [(8, 16), (20, 20), (48, 24)]),
    (3, "same", 1, (13, 30, 27), [(8, 8, 8), (6, 12, 16), (4, 20, 12)]),
    (3, "valid", None, (11, 22, 19), [(4, 8, 8), (6, 12, 16), (8, 4, 12)]),
]


@pytest.mark.parametrize("ndim,padding,channels,shape,blocks", CASES)
def test_store_prediction_equals_whole_image_inference(tmp_path, ndim, padding, channels,
                                                       shape, blocks):
    torch.manual_seed(0)
    pooling = [(1, 2, 2), (2, 2, 2)] if ndim == 3 else None
    model = trained_looking(UNet(ndim=ndim, in_channels=channels or 1, out_channels=3,
                                 depth=2, features=3, padding=padding, norm="batch",
                                 pooling=pooling))
    ckpt = save_model(model, tmp_path / "model.pt")
    c = channels or 1
    image = np.random.default_rng(ndim).random((c, *shape)).astype(np.float32)
    axes = ("c" if channels else "") + "zyx"[-ndim:]
    # stored chunks that match no block: windows cross chunk borders
    write_ome_zarr(tmp_path / "in.ome.zarr", image if channels else image[0], axes=axes,
                   spacing=(1.0,) * ndim, chunks=(7,) * ndim)
    # whole-image inference: one window holds the whole (mirror-padded) image
    whole = predict_array(model, image, block=(256,) * ndim)
    for block in blocks:
        out = tmp_path / f"out{'x'.join(map(str, block))}.ome.zarr"
        result = predict_store(ckpt, tmp_path / "in.ome.zarr", out, block=block, halo="exact",
                               execution=Execution(threads=2, progress=False))
        probs = probabilities(out)
        assert probs.shape == (3, *shape) and probs.dtype == np.float32
        assert np.abs(probs - whole).max() <= 1e-4, block
        n_blocks = np.prod([-(-s // b) for s, b in zip(shape, result.block, strict=True)])
        assert result.blocks == result.computed == n_blocks
        assert zarr.open_array(os.path.join(out, "0")).chunks == (3, *result.block)


AUTO_CASES = [
    (2, dict(depth=3, features=4), (300, 280), (32, 32)),
    (3, dict(depth=3, features=3, pooling=[(1, 2, 2), (2, 2, 2), (2, 2, 2)]), (12, 80, 72),
     (12, 32, 32)),
]


@pytest.mark.slow
@pytest.mark.parametrize("ndim,net,shape,block", AUTO_CASES)
def test_auto_halo_is_within_its_tolerance_of_whole_image_prediction(tmp_path, caplog, ndim,
                                                                    net, shape, block):
    """The auto halo, measured at first use on the image's centre, is smaller than
    the exact one and keeps every probability of the whole image (beyond the
    centre it was measured on, other block seams) within the tolerance."""
    from unetpipe.inputs.synth import synthetic_nuclei
    from unetpipe.nn.tiles import HALO_TOLERANCE, exact_halo

    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=ndim, out_channels=3, **net))
    raw, _ = synthetic_nuclei(shape, seed=ndim)
    image = ((raw - raw.mean()) / raw.std()).astype(np.float32)[None]
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="c" + "zyx"[-ndim:],
                   spacing=(1.0,) * ndim, chunks=(64,) * ndim)
    ckpt = save_model(model, tmp_path / "m.pt")
    caplog.set_level("INFO", logger="unetpipe")
    result = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "auto.ome.zarr",
                           block=block, execution=Execution(progress=False))
    assert "carries no measured halo" in caplog.text
    halo = [(w - b) // 2 for w, b in zip(result.window, result.block, strict=True)]
    exact = exact_halo(model.config)
    assert all(h <= e for h, e in zip(halo, exact, strict=True))
    assert halo != list(exact), (halo, exact)  # the point: less context than the exact one
    whole = predict_array(model, image, block=(512,) * ndim)
    deviation = np.abs(probabilities(tmp_path / "auto.ome.zarr") - whole).max()
    assert deviation <= HALO_TOLERANCE, deviation
    # "exact" is whole-image prediction; the measured halo is stored per process
    exact_out = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "exact.ome.zarr",
                              block=block, halo="exact", execution=Execution(progress=False))
    assert [(w - b) // 2 for w, b in zip(exact_out.window, exact_out.block, strict=True)] == \
        list(exact)
    assert np.abs(probabilities(tmp_path / "exact.ome.zarr") - whole).max() <= 1e-4


def test_the_halo_stored_with_the_model_is_used_without_measuring(tmp_path, caplog):
    from unetpipe.nn.checkpoint import EFFECTIVE_HALO, read_checkpoint

    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=3, out_channels=3))
    ckpt = save_model(model, tmp_path / "m.pt")
    payload = read_checkpoint(ckpt)
    payload[EFFECTIVE_HALO] = {"halo": [4, 8], "exact": [24, 24], "tolerance": 1e-3,
                               "deviation": 0.0, "shape": [64, 64]}
    save_checkpoint(payload, ckpt)
    write_ome_zarr(tmp_path / "in.ome.zarr", np.zeros((1, 64, 64), np.float32), axes="cyx",
                   spacing=(1.0, 1.0))
    caplog.set_level("INFO", logger="unetpipe")
    result = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "o.ome.zarr",
                           block=(32, 32), execution=Execution(progress=False))
    assert result.window == (40, 48)  # the stored halo, on the pooling grid (4)
    assert "measured" not in caplog.text
    # another tolerance: measured anew
    predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "p.ome.zarr", block=(32, 32),
                  halo_tolerance=1e-2, execution=Execution(progress=False))
    assert "carries no measured halo" in caplog.text
    with pytest.raises(ConfigError, match=r"'predict\.halo'"):
        predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "q.ome.zarr", halo="big")


def test_whole_image_reference_is_the_network_on_the_mirrored_image(tmp_path):
    """The reference above is itself checked against the network applied once."""
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=3, out_channels=3))
    image = np.random.default_rng(5).random((1, 40, 40)).astype(np.float32)
    _, _, offset = tiling(model.config, (40, 40), block=(40, 40))
    padded = np.pad(image, [(0, 0), (offset[0],) * 2, (offset[1],) * 2], mode="reflect")
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(padded[None])), 1)[0].numpy()
    ref = ref[:, offset[0]:offset[0] + 40, offset[1]:offset[1] + 40]
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0),
                   chunks=(16, 16))
    predict_store(save_model(model, tmp_path / "m.pt"), tmp_path / "in.ome.zarr",
                  tmp_path / "out.ome.zarr", block=(12, 20), halo="exact",
                  execution=Execution(progress=False))
    assert np.abs(probabilities(tmp_path / "out.ome.zarr") - ref).max() <= 1e-5


def test_output_store_is_ome_zarr_with_the_input_spacing(tmp_path):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=3, depth=1, features=2, out_channels=2))
    image = np.random.default_rng(0).random((1, 5, 20, 18)).astype(np.float32)
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="czyx", spacing=(2.0, 0.5, 0.25),
                   unit="micrometer", chunks=(5, 8, 8))
    ckpt = save_model(model, tmp_path / "m.pt", mode="two_class", spacing=[2.0, 0.5, 0.25])
    out = tmp_path / "probabilities" / "x.ome.zarr"
    result = predict_store(ckpt, tmp_path / "in.ome.zarr", out, block=(4, 8, 8), dtype="float16",
                           execution=Execution(progress=False))
    back = read_image(out)
    assert back.axes == "czyx" and back.data.shape == (2, 5, 20, 18)
    assert back.spacing == (2.0, 0.5, 0.25) and back.unit == "micrometer"
    assert back.data.dtype == np.float16
    attrs = zarr.open_group(str(out), mode="r").attrs["unetpipe"]
    assert attrs["classes"] == result.classes == ["background", "cell"]
    assert attrs["block"] == [4, 8, 8]
    # finished: no partial store, no block records left in the output
    assert not partial_path(out).exists() and not (out / DONE_DIR).exists()
    np.testing.assert_allclose(back.data.compute().astype(np.float32).sum(0), 1, atol=2e-3)


def test_flip_tta_is_the_mean_over_flipped_inputs(tmp_path):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=3, out_channels=3))
    image = np.random.default_rng(3).random((1, 48, 40)).astype(np.float32)
    _, _, offset = tiling(model.config, (48, 40), block=(48, 40))
    padded = torch.from_numpy(np.pad(image, [(0, 0), (offset[0],) * 2, (offset[1],) * 2],
                                     mode="reflect")[None])
    with torch.no_grad():
        flips = [(), (2,), (3,), (2, 3)]
        ref = sum(torch.softmax(model(torch.flip(padded, d)), 1).flip(d) if d else
                  torch.softmax(model(padded), 1) for d in flips)[0].numpy() / 4
    ref = ref[:, offset[0]:offset[0] + 48, offset[1]:offset[1] + 40]
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0),
                   chunks=(16, 16))
    ckpt = save_model(model, tmp_path / "m.pt")
    plain = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "a.ome.zarr", block=(48, 40),
                          halo="exact",
                          execution=Execution(progress=False))
    assert plain.computed == 1
    predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "b.ome.zarr", block=(48, 40),
                  halo="exact",
                  tta=True, execution=Execution(progress=False))
    tta = probabilities(tmp_path / "b.ome.zarr")
    assert np.abs(tta - ref).max() <= 1e-5
    assert np.abs(tta - probabilities(tmp_path / "a.ome.zarr")).max() > 1e-3
    predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "c.ome.zarr", block=(16, 24),
                  halo="exact",
                  tta=True, execution=Execution(progress=False))
    assert np.abs(probabilities(tmp_path / "c.ome.zarr") - tta).max() <= 1e-4


def test_empty_blocks_are_skipped_by_the_low_resolution_check(tmp_path):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=1, features=2, out_channels=3))
    image = np.zeros((1, 128, 128), np.float32)
    image[0, 70:90, 80:100] = 1.0  # one bright object; everything else is background
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0),
                   chunks=(32, 32), levels=2)
    ckpt = save_model(model, tmp_path / "m.pt")
    full = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "full.ome.zarr",
                         block=(16, 16), execution=Execution(progress=False))
    skip = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "skip.ome.zarr",
                         block=(16, 16), skip_empty=0.1, execution=Execution(progress=False))
    # the check reads pyramid level 2 (4x smaller), not the full resolution
    level, factors = _skip_level(str(tmp_path / "in.ome.zarr"),
                                 read_image(tmp_path / "in.ome.zarr"), skip_window(ckpt))
    assert level.endswith("2") and factors == (4, 4)
    assert full.computed == 64 and full.skipped == 0
    assert skip.skipped > 32 and skip.computed + skip.skipped == 64
    a, b = probabilities(tmp_path / "full.ome.zarr"), probabilities(tmp_path / "skip.ome.zarr")
    # blocks near the object are predicted as before; skipped ones are background
    np.testing.assert_array_equal(b[:, 64:96, 64:112], a[:, 64:96, 64:112])
    assert np.all(b[0, :32, :32] == 1) and np.all(b[1:, :32, :32] == 0)
    # without a pyramid the window itself is checked: the same blocks are skipped
    write_ome_zarr(tmp_path / "flat.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0),
                   chunks=(32, 32))
    flat = predict_store(ckpt, tmp_path / "flat.ome.zarr", tmp_path / "flat-out.ome.zarr",
                         block=(16, 16), skip_empty=0.1, execution=Execution(progress=False))
    assert (flat.computed, flat.skipped) == (skip.computed, skip.skipped)
    np.testing.assert_array_equal(probabilities(tmp_path / "flat-out.ome.zarr"), b)


def skip_window(ckpt):
    from unetpipe.nn.models import load_checkpoint

    return tiling(load_checkpoint(ckpt)["model"]["config"], (128, 128), block=(16, 16))[1]


def test_wrong_dimensionality_and_channels_fail_with_a_clear_message(tmp_path, capsys):
    model2d = UNet(ndim=2, depth=1, features=2)
    ckpt = save_model(model2d, tmp_path / "m.pt")
    write_ome_zarr(tmp_path / "stack.ome.zarr", np.zeros((1, 4, 16, 16), np.float32),
                   axes="czyx", spacing=(1.0, 1.0, 1.0))
    write_ome_zarr(tmp_path / "two.ome.zarr", np.zeros((2, 16, 16), np.float32), axes="cyx",
                   spacing=(1.0, 1.0))
    with pytest.raises(InputError, match=r"stack.ome.zarr: is 3D .* predicts 2D images"):
        predict_store(ckpt, tmp_path / "stack.ome.zarr", tmp_path / "o.ome.zarr")
    with pytest.raises(InputError, match=r"two.ome.zarr: has 2 channel\(s\) .* trained on 1"):
        predict_store(ckpt, tmp_path / "two.ome.zarr", tmp_path / "o.ome.zarr")
    # through the command line: one line naming the file, exit status 1, no output
    code = main(["predict", str(ckpt), str(tmp_path / "stack.ome.zarr"),
                 str(tmp_path / "o.ome.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "stack.ome.zarr: is 3D" in err[0], err
    assert not (tmp_path / "o.ome.zarr").exists()
    assert not partial_path(tmp_path / "o.ome.zarr").exists()
    code = main(["predict", str(ckpt), str(tmp_path / "two.ome.zarr"),
                 str(tmp_path / "o.ome.zarr"), "--block", "16", "16", "16"])
    err = capsys.readouterr().err
    assert code == 1 and "two.ome.zarr" in err


def test_corrupt_input_chunk_fails_naming_the_store(tmp_path, capsys):
    model = UNet(ndim=2, depth=1, features=2)
    ckpt = save_model(model, tmp_path / "m.pt")
    store = tmp_path / "in.ome.zarr"
    write_ome_zarr(store, np.random.default_rng(0).random((1, 32, 32)).astype(np.float32),
                   axes="cyx", spacing=(1.0, 1.0), chunks=(16, 16))
    chunk = next(p for p in (store / "0").rglob("*")
                 if p.is_file() and p.name not in ngff.METADATA_FILES)
    chunk.write_bytes(b"not a compressed chunk")
    code = main(["-q", "predict", str(ckpt), str(store), str(tmp_path / "o.ome.zarr"),
                 "--block", "16", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "in.ome.zarr: cannot read pixel data" in err[0]
    assert not (tmp_path / "o.ome.zarr").exists()


def test_block_of_the_wrong_length_names_the_key(tmp_path):
    model = UNet(ndim=2, depth=1, features=2)
    write_ome_zarr(tmp_path / "in.ome.zarr", np.zeros((1, 16, 16), np.float32), axes="cyx",
                   spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match=r"'predict\.block'"):
        predict_store(save_model(model, tmp_path / "m.pt"), tmp_path / "in.ome.zarr",
                      tmp_path / "o.ome.zarr", block=(8, 8, 8))


def test_changed_settings_start_afresh_and_unchanged_ones_resume(tmp_path, caplog):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=3, out_channels=3))
    image = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0))
    ckpt = save_model(model, tmp_path / "m.pt")
    out = tmp_path / "o.ome.zarr"
    part = partial_path(out)
    # a partial store left by a run with another block size: not reused
    predict_store(ckpt, tmp_path / "in.ome.zarr", out, block=(16, 16), halo="exact",
                  execution=Execution(progress=False))
    os.rename(out, part)
    (part / DONE_DIR).mkdir()
    caplog.set_level("INFO", logger="unetpipe")
    result = predict_store(ckpt, tmp_path / "in.ome.zarr", out, block=(32, 32), halo="exact",
                           execution=Execution(progress=False))
    assert result.resumed == 0 and result.computed == 4
    assert "starting afresh" in caplog.text and "block" in caplog.text
    np.testing.assert_allclose(probabilities(out), predict_array(model, image), atol=1e-4)


def test_a_run_killed_while_finishing_is_finished_without_predicting(tmp_path, caplog):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=3, out_channels=3))
    write_ome_zarr(tmp_path / "in.ome.zarr",
                   np.random.default_rng(0).random((1, 40, 40)).astype(np.float32),
                   axes="cyx", spacing=(1.0, 1.0))
    ckpt = save_model(model, tmp_path / "m.pt")
    out = tmp_path / "o.ome.zarr"
    first = predict_store(ckpt, tmp_path / "in.ome.zarr", out, block=(16, 16),
                          execution=Execution(progress=False))
    expected = probabilities(out)
    # as if killed after the block records were removed but before the rename
    os.rename(out, partial_path(out))
    caplog.set_level("INFO", logger="unetpipe")
    again = predict_store(ckpt, tmp_path / "in.ome.zarr", out, block=(16, 16),
                          execution=Execution(progress=False))
    assert first.computed == 9 and again.computed == 0 and again.resumed == 9
    assert "is complete; finishing it" in caplog.text
    np.testing.assert_array_equal(probabilities(out), expected)


def test_input_error_survives_pickling():
    """dask.distributed sends a worker's exception back pickled."""
    import pickle

    error = pickle.loads(pickle.dumps(InputError("a.zarr", "cannot read pixel data")))
    assert isinstance(error, InputError) and str(error) == "a.zarr: cannot read pixel data"
    assert error.path == "a.zarr"


def _kill_when(proc, folder, at_least):
    """SIGKILL ``proc`` once ``folder`` holds ``at_least`` files; return how many it held."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("predict ended before it could be killed: "
                                 + proc.stderr.read().decode())
        n = len(os.listdir(folder)) if folder.is_dir() else 0
        if n >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return n
        time.sleep(0.005)
    raise AssertionError("predict made no progress")


def _chunk_files(store):
    """Stat of every stored chunk of level 0, by block index."""
    # chunk keys: 0/c/class/i/j in Zarr format 3 (NGFF 0.5), 0/class/i/j in format 2
    root = store / "0" / "c" if (store / "0" / "c").is_dir() else store / "0"
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and path.name not in ngff.METADATA_FILES:
            parts = path.relative_to(root).parts  # class / i / j
            st = path.stat()
            out[tuple(int(p) for p in parts[1:])] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


@pytest.mark.slow
def test_sigkilled_predict_resumes_without_recomputing_finished_blocks(tmp_path):
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=8, out_channels=3))
    ckpt = save_model(model, tmp_path / "m.pt")
    image = np.random.default_rng(0).random((1, 640, 512)).astype(np.float32)
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0),
                   chunks=(128, 128))
    args = [str(ckpt), str(tmp_path / "in.ome.zarr")]
    opts = ["--block", "32", "32", "--threads", "2", "--workers", "2"]
    n_blocks = 20 * 16

    def cli(out, log):
        return [sys.executable, "-m", "unetpipe", "-q", "--log", str(log), "predict", *args,
                str(out), *opts]

    # the reference: one uninterrupted run
    subprocess.run(cli(tmp_path / "ref.ome.zarr", tmp_path / "ref.log"), check=True,
                   timeout=300)
    reference = probabilities(tmp_path / "ref.ome.zarr")

    out = tmp_path / "out.ome.zarr"
    part = partial_path(out)
    proc = subprocess.Popen(cli(out, tmp_path / "1.log"), stderr=subprocess.PIPE)
    _kill_when(proc, part / DONE_DIR, at_least=n_blocks // 3)
    assert not out.exists() and part.is_dir()
    done = {tuple(int(v) for v in name.split(".")) for name in os.listdir(part / DONE_DIR)}
    assert n_blocks // 3 <= len(done) < n_blocks
    before = _chunk_files(part)
    assert set(done) <= set(before)

    subprocess.run(cli(out, tmp_path / "2.log"), check=True, timeout=300)
    log = (tmp_path / "2.log").read_text()
    summary = next(line for line in log.splitlines() if "computed" in line)
    assert (f"{n_blocks} blocks ({n_blocks - len(done)} computed, 0 skipped as empty, "
            f"{len(done)} done before)") in summary, summary
    np.testing.assert_array_equal(probabilities(out), reference)
    # the blocks done before the kill were not written again
    after = _chunk_files(out)
    assert all(after[b] == before[b] for b in done)
    assert len(after) == n_blocks and not part.exists()


@pytest.mark.slow
def test_distributed_cluster_loads_the_model_once_per_worker(tmp_path):
    distributed = pytest.importorskip("distributed")
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=2, depth=2, features=3, out_channels=3))
    ckpt = save_model(model, tmp_path / "m.pt")
    image = np.random.default_rng(0).random((1, 96, 80)).astype(np.float32)
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(1.0, 1.0))
    loaded_here = len(MODEL_LOADS)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        result = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "o.ome.zarr",
                               block=(16, 16), halo="exact",
                               execution=Execution(scheduler="distributed", address=cluster.scheduler_address, threads=2, workers=2, progress=False))
        loads = client.run(lambda: list(__import__("unetpipe.stages.predict").stages.predict.MODEL_LOADS))
    assert result.computed == 30
    # each worker that ran blocks loaded the checkpoint exactly once
    assert sorted(len(v) for v in loads.values()) in ([1, 1], [0, 1])
    assert len(MODEL_LOADS) == loaded_here  # none in this process
    np.testing.assert_allclose(probabilities(tmp_path / "o.ome.zarr"),
                               predict_array(model, image), atol=1e-4)


@pytest.mark.gpu
def test_cuda_prediction_matches_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    model = trained_looking(UNet(ndim=3, depth=2, features=4, out_channels=3))
    ckpt = save_model(model, tmp_path / "m.pt")
    image = np.random.default_rng(0).random((1, 20, 70, 60)).astype(np.float32)
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="czyx", spacing=(1.0, 1.0, 1.0))
    cpu = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "cpu.ome.zarr",
                        block=(8, 32, 32),
                        halo="exact", device="cpu", execution=Execution(progress=False))
    fp32 = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "f32.ome.zarr",
                         block=(8, 32, 32), halo="exact", device="cuda", bf16=False,
                         execution=Execution(progress=False))
    bf16 = predict_store(ckpt, tmp_path / "in.ome.zarr", tmp_path / "bf16.ome.zarr",
                         block=(16, 64, 64),
                         halo="exact", device="cuda", execution=Execution(progress=False))
    assert cpu.device == "cpu" and fp32.device.startswith("cuda") and bf16.batch_size == 4
    ref = probabilities(tmp_path / "cpu.ome.zarr")
    # TF32 convolutions by default on CUDA
    assert np.abs(probabilities(tmp_path / "f32.ome.zarr") - ref).max() <= 5e-3
    assert np.abs(probabilities(tmp_path / "bf16.ome.zarr") - ref).max() <= 0.05
