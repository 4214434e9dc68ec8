import numpy as np
import pytest
import timm
import torch
from matplotlib import cbook
from PIL import Image

from pipeline.encoders import FrozenEncoder, encoder_names, get_spec
from pipeline.encoders.efficientnet_lite0 import bundled_weights_path
from pipeline.errors import UserError

REQUIRED = ["dinov2", "dinov2-vitb14", "clip", "clip-rn50", "r3m", "r3m-rn18", "vip", "vc1", "vc1-vitl", "mvp",
            "mae", "resnet50-imagenet", "siglip", "efficientnet-lite0", "random-vit", "pixels"]


@pytest.fixture(autouse=True)
def empty_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PVR_PIPE_WEIGHTS", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


def test_registry_has_the_papers_pvrs_with_their_properties():
    assert set(REQUIRED) <= set(encoder_names())
    assert get_spec("dinov2").arch_type == "vit" and get_spec("r3m").arch_type == "cnn"
    assert get_spec("r3m").video and get_spec("clip").language and not get_spec("dinov2").language
    with pytest.raises(UserError, match="valid models: .*dinov2"):
        get_spec("dino-v7")


def test_efficientnet_lite0_real_weights_classify_a_real_photo():
    encoder = FrozenEncoder(get_spec("efficientnet-lite0"), precision="fp32")
    assert encoder.weights_source == "bundled" and len(encoder.weights_sha256) == 64
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    embedding = encoder(np.asarray(photo)[None])  # resized to 224 by the registry's preprocessing
    assert embedding.shape == (1, 1280)
    head = torch.load(bundled_weights_path(), weights_only=True)
    logits = embedding @ head["_fc.weight"].T + head["_fc.bias"]
    assert logits.argmax().item() == 652  # ImageNet "military uniform": Grace Hopper in uniform


def _roundtrip(spec_name, checkpoint_of, weights_dir, tmp_path):
    spec = get_spec(spec_name)
    original = timm.create_model(spec.architecture, pretrained=False, **spec.model_kwargs).eval()
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint_of(original.state_dict()), path)
    encoder = FrozenEncoder(spec, weights=path, precision="fp32")
    for key, value in original.state_dict().items():
        assert torch.equal(encoder.model.state_dict()[key], value), key
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    x = encoder.preprocess(frames)
    with torch.inference_mode():
        expected = original(x)
    torch.testing.assert_close(encoder.forward(x), expected)
    assert encoder.weights_source == "explicit"


def test_r3m_checkpoint_layout_round_trips(empty_weights_dir, tmp_path):
    def r3m_layout(state):
        convnet = {f"module.convnet.{k}": v for k, v in state.items()}
        return {"r3m": {**convnet, "module.lang_enc.weight": torch.zeros(3), "module.lang_rew.0.weight": torch.zeros(2)}}
    _roundtrip("r3m-rn18", r3m_layout, empty_weights_dir, tmp_path)


def test_vip_checkpoint_layout_round_trips(empty_weights_dir, tmp_path):
    _roundtrip("vip", lambda state: {"vip": {f"module.convnet.{k}": v for k, v in state.items()}},
               empty_weights_dir, tmp_path)


def test_vc1_mae_checkpoint_layout_round_trips(empty_weights_dir, tmp_path):
    def mae_layout(state):
        decoder = {"decoder_embed.weight": torch.zeros(4, 4), "decoder_pred.bias": torch.zeros(4),
                   "mask_token": torch.zeros(1, 1, 4)}
        return {"model": {**state, **decoder}, "epoch": 799}
    _roundtrip("vc1", mae_layout, empty_weights_dir, tmp_path)


def test_timm_weights_from_the_weights_directory(empty_weights_dir):
    """A timm-tag entry loads a local file through timm's own pretrained path (pretrained_cfg_overlay)."""
    from safetensors.torch import save_file

    spec = get_spec("dinov2")
    reference = timm.create_model(spec.architecture, pretrained=False, **spec.model_kwargs)
    save_file(reference.state_dict(), str(empty_weights_dir / "dinov2.safetensors"))
    encoder = FrozenEncoder(spec, precision="fp32")
    assert encoder.weights_source == "weights-dir"
    for key, value in reference.state_dict().items():
        assert torch.equal(encoder.model.state_dict()[key], value), key


def test_missing_weights_offline_say_which_file_and_where(empty_weights_dir):
    with pytest.raises(UserError, match=r"r3m_resnet50\.pt.*" + str(empty_weights_dir)):
        FrozenEncoder(get_spec("r3m"))
    with pytest.raises(UserError, match="--download.*dinov2.safetensors"):
        FrozenEncoder(get_spec("dinov2"))


def test_weights_of_the_wrong_architecture_are_refused(tmp_path):
    small = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save({"r3m": {f"module.convnet.{k}": v for k, v in small.state_dict().items()}}, tmp_path / "rn18.pt")
    with pytest.raises(UserError, match="does not fit 'r3m'.*wrong shape"):
        FrozenEncoder(get_spec("r3m"), weights=tmp_path / "rn18.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        FrozenEncoder(get_spec("r3m"), weights=tmp_path / "junk.pt")


def test_random_vit_is_seeded_and_recorded():
    a, b = FrozenEncoder(get_spec("random-vit")), FrozenEncoder(get_spec("random-vit"))
    assert a.weights_sha256 == "random-init"
    for key, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[key], value)
