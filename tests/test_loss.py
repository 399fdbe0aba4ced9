"""The losses against hand computations and plain reference formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from unetpipe.nn.loss import SegmentationLoss, soft_dice_loss, weighted_cross_entropy


def random_batch(shape=(2, 3, 5, 6), *, seed=0, pad=0):
    """Logits (N, C, *S); targets and weights (N, *S) grown by ``pad`` on each side."""
    g = torch.Generator().manual_seed(seed)
    n, c, *spatial = shape
    big = [s + 2 * pad for s in spatial]
    logits = torch.randn(shape, generator=g) * 3
    targets = torch.randint(0, c, (n, *big), generator=g)
    weights = torch.rand((n, *big), generator=g) * 5
    return logits, targets, weights


# -- weighted cross entropy ------------------------------------------------------------


def test_weighted_cross_entropy_by_hand():
    # N=1, C=2, one row of 3 pixels
    logits = torch.tensor([[[[2.0, -1.0, 0.5]], [[0.0, 1.5, 0.5]]]])
    targets = torch.tensor([[[0, 1, 0]]])
    weights = torch.tensor([[[1.0, 3.0, 0.5]]])

    def nll(own, other):
        return -math.log(math.exp(own) / (math.exp(own) + math.exp(other)))

    expected = (1.0 * nll(2.0, 0.0) + 3.0 * nll(1.5, -1.0) + 0.5 * nll(0.5, 0.5)) / 3
    got = weighted_cross_entropy(logits, targets, weights)
    assert got.shape == () and got.dtype == torch.float32
    assert abs(float(got) - expected) < 1e-6
    assert abs(expected - 0.2367236) < 1e-6  # the hand value, written out


def test_weighted_cross_entropy_gradient_by_hand():
    # d loss / d logits = w * (softmax - one_hot) / number of pixels
    logits, targets, weights = random_batch((2, 3, 4, 4), seed=3)
    logits.requires_grad_(True)
    weighted_cross_entropy(logits, targets, weights).backward()
    one_hot = F.one_hot(targets, 3).movedim(-1, 1).float()
    expected = weights.unsqueeze(1) * (torch.softmax(logits.detach(), 1) - one_hot) / (2 * 16)
    assert torch.allclose(logits.grad, expected, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 3, 4, 5), (3, 4, 7)])
def test_unit_weights_equal_torch_cross_entropy(shape):
    logits, targets, _ = random_batch(shape, seed=1)
    got = weighted_cross_entropy(logits, targets, torch.ones(targets.shape))
    assert torch.allclose(got, F.cross_entropy(logits, targets), atol=1e-6)


def test_weights_multiply_per_pixel_losses():
    logits, targets, weights = random_batch((2, 4, 6, 5), seed=2)
    per_pixel = F.cross_entropy(logits, targets, reduction="none")
    got = weighted_cross_entropy(logits, targets, weights)
    assert torch.allclose(got, (weights * per_pixel).mean(), atol=1e-6)


def test_integer_target_dtypes():
    logits, targets, weights = random_batch((1, 2, 4, 4), seed=4)
    expected = weighted_cross_entropy(logits, targets, weights)
    for dtype in (torch.uint8, torch.int32):
        assert torch.equal(weighted_cross_entropy(logits, targets.to(dtype), weights), expected)


def test_valid_padding_crops_targets_and_weights():
    logits, targets, weights = random_batch((2, 3, 4, 6), seed=5, pad=3)
    assert targets.shape == (2, 10, 12)
    inner = (slice(None), slice(3, 7), slice(3, 9))
    expected = weighted_cross_entropy(logits, targets[inner].clone(), weights[inner].clone())
    assert torch.equal(weighted_cross_entropy(logits, targets, weights), expected)
    # what lies outside the centre does not matter
    weights_out = weights.clone()
    weights_out[:, :3] = 1e6
    targets_out = targets.clone()
    targets_out[:, :, -3:] = 0
    assert torch.equal(weighted_cross_entropy(logits, targets_out, weights_out), expected)


def test_shape_mismatches_raise():
    logits, targets, weights = random_batch((2, 3, 4, 6), seed=6, pad=1)
    with pytest.raises(ValueError, match=r"targets of shape \(2, 3, 8\).*\(4, 6\)"):
        weighted_cross_entropy(logits, targets[:, :3], weights)  # smaller than the logits
    with pytest.raises(ValueError, match=r"weights of shape \(2, 6, 7\)"):
        weighted_cross_entropy(logits, targets, weights[:, :, :7])  # odd difference
    with pytest.raises(ValueError, match=r"\(N, \*spatial\) = \(2, \*spatial\)"):
        weighted_cross_entropy(logits, targets[:1], weights[:1])
    with pytest.raises(ValueError, match=r"got \(2, 1, 6, 8\)"):
        weighted_cross_entropy(logits, targets.unsqueeze(1), weights)
    with pytest.raises(ValueError, match="integer class ids"):
        weighted_cross_entropy(logits, targets.float(), weights)
    bad = targets.clone()
    bad[0, 2, 2] = 3
    with pytest.raises(ValueError, match=r"\[0, 2\].*\[0, 3\]"):
        weighted_cross_entropy(logits, bad, weights)


def test_bf16_logits_under_autocast():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 8, 8)
    _, targets, weights = random_batch((2, 3, 8, 8), seed=7)
    expected = weighted_cross_entropy(conv(x), targets, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        got = weighted_cross_entropy(logits, targets, weights)
        dice = soft_dice_loss(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert got.dtype == torch.float32 and dice.dtype == torch.float32
    # float32 arithmetic on the bf16 values: only the rounding of the logits differs
    assert torch.allclose(got, weighted_cross_entropy(logits.float(), targets, weights),
                          atol=1e-6)
    assert torch.allclose(got, expected, rtol=2e-2)
    assert torch.allclose(dice, soft_dice_loss(conv(x), targets), atol=1e-2)
    got.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


# -- soft Dice --------------------------------------------------------------------------------


def test_soft_dice_perfect_prediction():
    _, targets, _ = random_batch((2, 3, 6, 6), seed=8)
    logits = 40.0 * F.one_hot(targets, 3).movedim(-1, 1).float()
    assert float(soft_dice_loss(logits, targets)) < 1e-6
    wrong = 40.0 * F.one_hot((targets + 1) % 3, 3).movedim(-1, 1).float()
    assert float(soft_dice_loss(wrong, targets)) > 1 - 1e-6


def test_soft_dice_by_hand():
    # N=1, C=2, two pixels; p1 = sigmoid(l1 - l0) per pixel, target [1, 0]
    logits = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]]])
    targets = torch.tensor([[[1, 0]]])
    p1 = [1 / (1 + math.exp(-(2.0 - 0.0))), 1 / (1 + math.exp(-(0.0 - 1.0)))]
    eps = 1e-6
    expected = 1 - (2 * p1[0] + eps) / (p1[0] + p1[1] + 1 + eps)
    assert abs(float(soft_dice_loss(logits, targets)) - expected) < 1e-6
    assert abs(expected - 0.1805541) < 1e-6


def test_soft_dice_mean_over_foreground_classes():
    # brute force: loops over classes, sums over batch and pixels
    logits, targets, _ = random_batch((2, 4, 3, 5), seed=9)
    p = torch.softmax(logits.double(), 1)
    scores = []
    for c in range(1, 4):
        g = (targets == c).double()
        inter = (p[:, c] * g).sum()
        scores.append((2 * inter + 1e-6) / (p[:, c].sum() + g.sum() + 1e-6))
    expected = 1 - sum(scores) / 3
    assert abs(float(soft_dice_loss(logits, targets)) - float(expected)) < 1e-6
    # class 0 is left out: swapping background and class 1 changes the loss
    swapped = torch.where(targets < 2, 1 - targets, targets)
    assert abs(float(soft_dice_loss(logits, swapped)) - float(expected)) > 1e-3


def test_soft_dice_absent_class_scores_one():
    logits = torch.tensor([[[[50.0, 50.0]], [[-50.0, -50.0]], [[0.0, 100.0]]]])
    targets = torch.tensor([[[0, 2]]])  # class 1 absent, and predicted nowhere
    got = float(soft_dice_loss(logits, targets))
    assert got < 1e-5


def test_soft_dice_crops_and_checks():
    logits, targets, _ = random_batch((1, 3, 4, 4), seed=10, pad=2)
    inner = targets[:, 2:6, 2:6].clone()
    assert torch.equal(soft_dice_loss(logits, targets), soft_dice_loss(logits, inner))
    with pytest.raises(ValueError, match=r"targets of shape \(1, 3, 8\)"):
        soft_dice_loss(logits, targets[:, :3])
    with pytest.raises(ValueError, match="at least 2 channels"):
        soft_dice_loss(logits[:, :1], torch.zeros(1, 4, 4, dtype=torch.long))


# -- SegmentationLoss ---------------------------------------------------------------------------


def test_segmentation_loss_combines():
    logits, targets, weights = random_batch((2, 3, 6, 4), seed=11, pad=1)
    ce = weighted_cross_entropy(logits, targets, weights)
    dice = soft_dice_loss(logits, targets)
    assert torch.equal(SegmentationLoss()(logits, targets, weights), ce)
    loss = SegmentationLoss(dice=0.5)
    assert torch.allclose(loss(logits, targets, weights), ce + 0.5 * dice, atol=1e-7)
    assert loss.config == {"dice": 0.5}
    assert SegmentationLoss(**loss.config).config == loss.config
    assert SegmentationLoss(dice=1).config == {"dice": 1.0}


@pytest.mark.parametrize("dice", [-0.1, float("nan"), float("inf"), "1", True])
def test_segmentation_loss_bad_dice(dice):
    with pytest.raises(ValueError, match="dice"):
        SegmentationLoss(dice=dice)


def test_segmentation_loss_is_keyword_only():
    with pytest.raises(TypeError):
        SegmentationLoss(0.5)
