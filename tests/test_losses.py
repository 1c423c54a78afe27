"""Losses: registry, per-target sums, masks, deep supervision against hand computations, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytc.config import ModelConfig, TargetConfig
from pytc.errors import ConfigError
from pytc.losses import build_loss, deep_supervision_weights, list_losses

UPSTREAM_NAMES = {"DiceLoss", "FocalLoss", "TverskyLoss", "DiceCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"}
REGRESSION = {"MSELoss", "SmoothL1Loss"}
SHAPE = (2, 8, 8, 8)  # N, *spatial (channels added per test)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary(c: int, seed: int = 0, p: float = 0.3, dtype=torch.float32) -> torch.Tensor:
    n, *spatial = SHAPE
    return (torch.rand(n, c, *spatial, generator=_gen(seed)) < p).to(dtype)


def _logits(c: int, seed: int = 1, dtype=torch.float32, spatial=SHAPE[1:]) -> torch.Tensor:
    return torch.randn(SHAPE[0], c, *spatial, generator=_gen(seed), dtype=dtype).requires_grad_()


def _affinity(n_offsets: int = 3, **kw) -> TargetConfig:
    offsets = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 3]][:n_offsets]
    return TargetConfig(name="affinity", offsets=offsets, **kw)


def _one_loss(name: str) -> tuple[ModelConfig, list[TargetConfig], torch.Tensor]:
    """A config using only ``name`` on a target it fits, and a matching random target."""
    model = ModelConfig(loss_functions=[name], loss_weights=[1.0])
    if name in REGRESSION:
        target = torch.rand(*SHAPE[:1], 1, *SHAPE[1:], generator=_gen(0))
        return model, [TargetConfig(name="distance")], target
    return model, [_affinity(3)], _binary(3)  # multi-channel: CE needs >= 2, sigmoid losses must not mix channels


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI DiceLoss(batch=True) after a sigmoid, by hand: per channel over batch and space."""
    p = torch.sigmoid(logits)
    dims = [0, *range(2, p.ndim)]
    inter, denom = (p * target).sum(dims), p.sum(dims) + target.sum(dims)
    return (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()


def test_registry_names():
    assert set(list_losses()) == UPSTREAM_NAMES | REGRESSION | {"WeightedBCELoss"}
    assert list_losses("Dice*") == ["DiceCELoss", "DiceLoss"]


@pytest.mark.parametrize("name", sorted(UPSTREAM_NAMES | REGRESSION | {"WeightedBCELoss"}))
def test_every_loss_gives_finite_scalar_with_gradient(name):
    model, targets, target = _one_loss(name)
    logits = _logits(target.shape[1])
    loss, terms = build_loss(model, targets)(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    (key,) = terms
    assert key == f"{targets[0].name}/{name}"
    assert not terms[key].requires_grad and torch.equal(terms[key], loss.detach())


@pytest.mark.parametrize("name", sorted(UPSTREAM_NAMES | REGRESSION | {"WeightedBCELoss"}))
def test_mask_is_honoured(name):
    model, targets, target = _one_loss(name)
    criterion = build_loss(model, targets)
    mask = _binary(1, seed=5, p=0.6)  # (N, 1, *spatial), broadcast over channels
    logits = _logits(target.shape[1])
    loss, _ = criterion(logits, target, mask)
    loss.backward()
    changed = (logits.detach() + 7.0 * (1 - mask) * torch.randn_like(logits)).requires_grad_()
    loss_changed, _ = criterion(changed, target, mask)
    assert loss_changed.item() == pytest.approx(loss.item(), abs=1e-6)
    assert (logits.grad * (1 - mask)).abs().max() == 0  # no gradient leaks into ignored voxels
    unmasked, _ = criterion(logits, target)
    assert unmasked.item() != pytest.approx(loss.item(), abs=1e-6)  # the mask really did something


def test_per_channel_mask_equals_cropping_to_valid_voxels():
    # A (N, C) mask that is valid on the first half of x only must equal the loss on that half.
    criterion = build_loss(ModelConfig(loss_functions=["BCEWithLogitsLoss"], loss_weights=[1.0]), [_affinity(2)])
    logits, target = _logits(2), _binary(2)
    mask = torch.zeros_like(target)
    mask[..., :4] = 1
    loss, _ = criterion(logits, target, mask)
    assert loss.item() == pytest.approx(_bce(logits[..., :4], target[..., :4]).item(), abs=1e-6)


def test_each_target_gets_its_own_channels_and_losses():
    model = ModelConfig(loss_functions=["DiceLoss", "BCEWithLogitsLoss"], loss_weights=[1.0, 1.0])
    targets = [
        TargetConfig(name="binary", losses=["DiceLoss"], loss_weights=[2.0]),
        _affinity(2, losses=["BCEWithLogitsLoss", "MSELoss"], loss_weights=[1.0, 0.5]),
        TargetConfig(name="contour"),  # no own losses: model.loss_functions / loss_weights
        TargetConfig(name="distance", distance_mode="signed", losses=["SmoothL1Loss"]),  # weight defaults to 1
    ]
    logits = _logits(5, dtype=torch.float64)
    target = torch.cat([_binary(4, dtype=torch.float64), torch.rand(2, 1, 8, 8, 8, dtype=torch.float64) * 2 - 1], 1)
    loss, terms = build_loss(model, targets)(logits, target)

    b, a, c, d = (slice(0, 1), slice(1, 3), slice(3, 4), slice(4, 5))
    expected = {
        "binary/DiceLoss": _dice(logits[:, b], target[:, b]),
        "affinity/BCEWithLogitsLoss": _bce(logits[:, a], target[:, a]),
        "affinity/MSELoss": ((torch.sigmoid(logits[:, a]) - target[:, a]) ** 2).mean(),  # binary kind: sigmoid
        "contour/DiceLoss": _dice(logits[:, c], target[:, c]),
        "contour/BCEWithLogitsLoss": _bce(logits[:, c], target[:, c]),
        "distance/SmoothL1Loss": F.smooth_l1_loss(logits[:, d], target[:, d]),  # distance: raw outputs
    }
    weights = {"binary/DiceLoss": 2.0, "affinity/MSELoss": 0.5}
    assert list(terms) == list(expected)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value.item(), abs=1e-9), key
    hand = sum(weights.get(k, 1.0) * v for k, v in expected.items())
    assert loss.item() == pytest.approx(hand.item(), abs=1e-9)


def test_repeated_target_names_get_distinct_terms():
    criterion = build_loss(ModelConfig(), [_affinity(1), _affinity(2)])
    _, terms = criterion(_logits(3), _binary(3))
    assert set(terms) == {f"{t}/{l}" for t in ("affinity", "affinity_2") for l in ("DiceLoss", "BCEWithLogitsLoss")}


def test_deep_supervision_matches_hand_computation():
    model = ModelConfig(deep_supervision=True)  # Dice + BCE, weights 1, 1
    targets = [TargetConfig(name="binary"), TargetConfig(name="distance", losses=["MSELoss"])]
    target = torch.cat([_binary(1, dtype=torch.float64), torch.rand(2, 1, 8, 8, 8, dtype=torch.float64)], 1)
    outputs = [_logits(2, seed=s, dtype=torch.float64, spatial=(n, n, n)) for s, n in ((1, 8), (2, 4), (3, 2))]
    loss, terms = build_loss(model, targets)(outputs, target)

    hand, weights = 0.0, [1.0, 0.5, 0.25]
    for i, (out, w) in enumerate(zip(outputs, weights)):
        f = 2**i
        binary = target[:, :1, ::f, ::f, ::f]  # nearest neighbour
        distance = F.avg_pool3d(target[:, 1:], f) if f > 1 else target[:, 1:]  # area average
        scale = _dice(out[:, :1], binary) + _bce(out[:, :1], binary) + ((out[:, 1:] - distance) ** 2).mean()
        assert terms[f"scale{i}"].item() == pytest.approx(scale.item(), abs=1e-6)
        hand = hand + w / sum(weights) * scale  # normalised to sum 1, as nnU-Net
    assert loss.item() == pytest.approx(hand.item(), abs=1e-6)
    assert terms["binary/DiceLoss"].item() == pytest.approx(_dice(outputs[0][:, :1], target[:, :1]).item(), abs=1e-9)
    loss.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


def test_deep_supervision_weights():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(2, [3.0, 1.0]) == pytest.approx([0.75, 0.25])
    criterion = build_loss(ModelConfig(deep_supervision_weights=[1.0, 0.0]), [TargetConfig(name="binary")])
    outputs = [_logits(1), _logits(1, spatial=(4, 4, 4))]
    loss, terms = criterion(outputs, _binary(1))
    single, _ = criterion(outputs[0], _binary(1))
    assert loss.item() == pytest.approx(single.item(), abs=1e-7) and "scale1" not in terms  # zero weight: skipped
    with pytest.raises(ConfigError, match=r"deep_supervision_weights has 2 entries but the model returns 3"):
        criterion([*outputs, _logits(1, spatial=(2, 2, 2))], _binary(1))
    with pytest.raises(ConfigError, match=r"deep_supervision_weights"):
        build_loss(ModelConfig(deep_supervision_weights=[1.0, -1.0]), [TargetConfig(name="binary")])


def test_deep_supervision_mask_is_resized():
    criterion = build_loss(ModelConfig(), [TargetConfig(name="binary")])
    mask = torch.zeros(2, 1, 8, 8, 8)
    mask[..., :4] = 1
    outputs = [_logits(1), _logits(1, seed=2, spatial=(4, 4, 4))]
    loss, _ = criterion(outputs, _binary(1), mask)
    changed = [o.detach().clone() for o in outputs]
    changed[0][..., 4:] += 5.0
    changed[1][..., 2:] += 5.0  # coarse voxels x >= 2 cover fine x >= 4: masked out
    assert criterion(changed, _binary(1), mask)[0].item() == pytest.approx(loss.item(), abs=1e-6)


def test_weighted_bce_weighs_rare_foreground_by_background_ratio():
    model = ModelConfig(loss_functions=["WeightedBCELoss"], loss_weights=[1.0])
    criterion = build_loss(model, [TargetConfig(name="binary")])
    logits = _logits(1, dtype=torch.float64)
    target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.float64)
    target[:, :, :2, :, :2] = 1  # 32 of 512 voxels per sample: background/foreground = 15
    loss, _ = criterion(logits, target)
    hand = -(15 * target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
    assert loss.item() == pytest.approx(hand.item(), abs=1e-9)
    assert loss.item() > _bce(logits, target).item()  # positives count more than in plain BCE

    target.zero_()
    target[0, 0, 0, 0, 0] = 1  # 1 of 1024: ratio 1023 is clipped to 20
    hand = -(20 * target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
    assert criterion(logits, target)[0].item() == pytest.approx(hand.item(), abs=1e-9)
    assert criterion(logits, torch.zeros_like(target))[0].item() == pytest.approx(
        _bce(logits, torch.zeros_like(target)).item(), abs=1e-9
    )  # no foreground at all: plain BCE


def test_half_precision_outputs_are_computed_in_float32():
    criterion = build_loss(ModelConfig(), [TargetConfig(name="binary")])
    logits = _logits(1).detach()
    loss, _ = criterion(logits.half(), _binary(1))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(criterion(logits.half().float(), _binary(1))[0].item(), abs=1e-6)


def test_bf16_outputs_under_cpu_autocast_are_computed_in_float32():
    # Affinity-like setup (WeightedBCE + Dice, several channels): the loss is float32 and equals the
    # float32 loss of the same (bf16-rounded) logits even when called inside autocast.
    model_cfg = ModelConfig(loss_functions=["WeightedBCELoss", "DiceLoss"], loss_weights=[1.0, 1.0])
    criterion = build_loss(model_cfg, [TargetConfig(name="affinity", offsets=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])])
    logits = (torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    target = (torch.rand(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = criterion(logits, target)
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    assert loss.item() == pytest.approx(criterion(logits.float(), target)[0].item(), abs=1e-6)


def test_unknown_loss_suggests_and_lists():
    expected = r"unknown loss 'DiceLos' in model.loss_functions \(did you mean 'DiceLoss'\?\); available: BCEWith"
    with pytest.raises(ConfigError, match=expected):
        build_loss(ModelConfig(loss_functions=["DiceLos"], loss_weights=[1.0]), [TargetConfig(name="binary")])
    with pytest.raises(ConfigError, match=r"'focalloss' in data.targets\[0\].losses \(did you mean 'FocalLoss'\?\)"):
        build_loss(ModelConfig(), [TargetConfig(name="binary", losses=["focalloss"])])
    with pytest.raises(ConfigError, match=r"'BCELoss' .*did you mean 'BCEWithLogitsLoss'"):  # torch's name
        build_loss(ModelConfig(loss_functions=["BCELoss"], loss_weights=[1.0]), [TargetConfig(name="binary")])


def test_cross_entropy_needs_two_channels():
    with pytest.raises(ConfigError, match=r"data.targets\[0\] \(binary\) has 1 channel but CrossEntropyLoss"):
        build_loss(ModelConfig(loss_functions=["CrossEntropyLoss"], loss_weights=[1.0]), [TargetConfig(name="binary")])


@pytest.mark.parametrize("name", sorted(UPSTREAM_NAMES | {"WeightedBCELoss"}))
def test_classification_loss_on_distance_is_rejected(name):
    targets = [TargetConfig(name="binary"), TargetConfig(name="distance", losses=[name])]
    expected = rf"data.targets\[1\] \(distance\) cannot use {name} .*\[MSELoss\] or \[SmoothL1Loss\]"
    with pytest.raises(ConfigError, match=expected):
        build_loss(ModelConfig(), targets)


def test_distance_with_default_model_losses_is_rejected():
    with pytest.raises(ConfigError, match=r"cannot use DiceLoss from model.loss_functions"):
        build_loss(ModelConfig(), [TargetConfig(name="distance")])


def test_target_loss_weights_must_match_losses():
    with pytest.raises(ConfigError, match=r"data.targets\[0\].loss_weights has 1 entries but its losses"):
        build_loss(ModelConfig(), [TargetConfig(name="binary", loss_weights=[1.0])])


def test_channel_mismatch_names_both_counts():
    criterion = build_loss(ModelConfig(), [TargetConfig(name="binary"), _affinity(3)])
    expected = r"model outputs 2 channels but data.targets \(binary 1, affinity 3\) need 4; set model.out_channels=4"
    with pytest.raises(ConfigError, match=expected):
        criterion(_logits(2), _binary(4))
    with pytest.raises(ConfigError, match=r"target has 3 channels but data.targets .* need 4"):
        criterion(_logits(4), _binary(3))
    with pytest.raises(ConfigError, match=r"model outputs 2 channels"):
        criterion([_logits(2), _logits(2, spatial=(4, 4, 4))], _binary(4))
