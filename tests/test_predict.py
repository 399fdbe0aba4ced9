"""Overlap-tile prediction of an image in memory: independent of the block size."""

import numpy as np
import pytest
import torch

from unetpipe.model import UNet
from unetpipe.predict import predict_array, tiling

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
