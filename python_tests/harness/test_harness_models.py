import pytest
import torch

from harness_helpers import single_thread  # noqa: F401 (autouse fixture)
from rdkernels.harness.models import MODELS, build_model
from rdkernels.harness.teacher import load_teacher_weights

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


def _repdistiller_wrn_names(state: dict) -> dict:
    """``state`` under the key names of RepDistiller's models/wrn.py: WideResNet.blockN
    is a NetworkBlock whose blocks sit in ``.layer``; a block's projection is ``convShortcut``."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0].startswith("block") and parts[1].isdigit():
            parts.insert(1, "layer")
        parts = ["convShortcut" if p == "shortcut" else p for p in parts]
        out[".".join(parts)] = value
    return out


def test_a_repdistiller_wrn_teacher_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model("wrn_16_2", num_classes=10).eval()
    with torch.no_grad():  # BN statistics other than the initial ones, so a buffer loaded wrong would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    theirs = _repdistiller_wrn_names(model.state_dict())
    assert {"conv1.weight", "block1.layer.0.bn1.running_var", "block1.layer.0.convShortcut.weight",
            "block3.layer.1.conv2.weight", "bn1.weight", "fc.bias"} <= set(theirs)
    path = tmp_path / "wrn_16_2_best.pth"
    torch.save({"epoch": 240, "model": theirs, "best_acc": torch.tensor(75.0), "optimizer": {}}, path)
    loaded = build_model("wrn_16_2", num_classes=10).eval()
    load_teacher_weights(loaded, str(path), "wrn_16_2")
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(model(x), loaded(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("saved,folder,loaded_as", [("resnet8x4", "resnet8x4_vanilla", "resnet32x4"),
                                                    ("wrn_16_2", "wrn_16_2_vanilla", "wrn_40_2"),
                                                    ("resnet32x4", "wrn_40_2_vanilla", "resnet8x4")])
def test_a_teacher_checkpoint_of_another_arch_names_the_arch_to_pass(tmp_path, saved, folder, loaded_as):
    """The folder name says which model a RepDistiller checkpoint holds (its
    get_teacher_name rule: the first segment, or the first three for wrn)."""
    path = tmp_path / folder / "ckpt.pth"
    path.parent.mkdir()
    torch.save({"model": build_model(saved, num_classes=2).state_dict()}, path)
    with pytest.raises(ValueError) as exc:
        load_teacher_weights(build_model(loaded_as, num_classes=2), str(path), loaded_as)
    message = str(exc.value)
    assert str(path) in message and repr(loaded_as) in message and len(message.splitlines()) == 1
    assert any(f"{kind} (first " in message for kind in ("missing keys", "unexpected keys", "of another shape"))
    named = folder.removesuffix("_vanilla")
    assert f"pass --teacher-arch {named}" in message


def test_a_teacher_checkpoint_in_a_folder_naming_no_model_gets_a_general_hint(tmp_path):
    path = tmp_path / "runs" / "ckpt.pth"
    path.parent.mkdir()
    torch.save(build_model("resnet8_tiny", num_classes=3).state_dict(), path)
    with pytest.raises(ValueError, match=r"keys of another shape \(first 'fc.weight': \(3, 8\) in the checkpoint, "
                                         r"\(2, 8\) in the model\)") as exc:
        load_teacher_weights(build_model("resnet8_tiny", num_classes=2), str(path), "resnet8_tiny")
    assert "--teacher-arch" in str(exc.value) and "pass --teacher-arch" not in str(exc.value)
