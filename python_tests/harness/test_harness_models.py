import pytest
import torch

from harness_helpers import single_thread  # noqa: F401 (autouse fixture)
from rdkernels.harness.models import MODELS, build_model

# parameter counts of the reference code's CIFAR-100 models (a check that the
# structure -- widths, depths, shortcuts -- is the same)
PARAMS = {
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet20": 278_324,
    "resnet56": 861_620,
    "wrn_16_2": 703_284,
    "wrn_40_2": 2_255_156,
}
FEAT_DIM = {"resnet8x4": 256, "resnet32x4": 256, "resnet20": 64, "resnet56": 64, "wrn_16_2": 128, "wrn_40_2": 128}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_structure_and_outputs(name):
    model = build_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.feat_dim == FEAT_DIM[name]
    model.eval()
    feat, logits = model(torch.randn(2, 3, 32, 32))
    assert feat.shape == (2, FEAT_DIM[name]) and logits.shape == (2, 100)
    # the feature is the pooled penultimate vector that the classifier reads
    torch.testing.assert_close(model.fc(feat), logits)


def test_every_registered_model_builds():
    for name in MODELS:
        feat, logits = build_model(name, num_classes=3).eval()(torch.randn(1, 3, 16, 16))
        assert logits.shape == (1, 3) and feat.dim() == 2


def test_unknown_model_is_an_error():
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet9000")
