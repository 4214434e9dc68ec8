import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from pipeline.config import EncodeConfig
from pipeline.encoders import get_spec
from pipeline.encoders.efficientnet_lite0 import bundled_weights_path, lite0_to_timm
from pipeline.storage.trajectory_reader import iter_episodes
from stages import encode
from tests.conftest import PVR_PIPE, assert_user_error, collect_toy, pvr_pipe, snapshot


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode") / "toy"
    collect_toy(root, episodes=6, max_steps=15)  # 3 shards of 2 episodes x 16 frames
    return root


@pytest.fixture(scope="module")
def vit_store(dataset, tmp_path_factory):
    """A random-vit store of the dataset at the default options, for the tests that only read it."""
    return run_encode(dataset, tmp_path_factory.mktemp("vit") / "s.zarr", model="random-vit")


def run_encode(dataset, out, **options):
    cfg = EncodeConfig(dataset=str(dataset), out=str(out), **options)
    return encode.run(cfg, show_progress=False)


def frames_of(dataset):
    return np.concatenate([episode.frames for episode in iter_episodes(dataset)])


def direct_forward(model, spec, frames):
    """The registry's preprocessing written out by hand, then a plain timm forward."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(spec.resolution,) * 2, mode=spec.interpolation, antialias=True,
                      align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.eval()(x).numpy()


def test_vit_embeddings_equal_a_direct_timm_forward(dataset, tmp_path):
    import zarr

    out = run_encode(dataset, tmp_path / "vit.zarr", model="random-vit", precision="fp32", dtype="float32")
    spec = get_spec("random-vit")
    torch.manual_seed(0)
    model = timm.create_model(spec.architecture, pretrained=False, **spec.model_kwargs)
    stored = zarr.open_group(out, mode="r")["embedding"][:]
    np.testing.assert_allclose(stored, direct_forward(model, spec, frames_of(dataset)), rtol=1e-4, atol=1e-4)


def test_cnn_embeddings_equal_a_direct_timm_forward(dataset, tmp_path):
    import zarr

    out = run_encode(dataset, tmp_path / "cnn.zarr", model="efficientnet-lite0", precision="fp32",
                     dtype="float32", batch_size=7)
    spec = get_spec("efficientnet-lite0")
    model = timm.create_model(spec.architecture, pretrained=False)
    model.load_state_dict(lite0_to_timm(torch.load(bundled_weights_path(), weights_only=True)))
    model.reset_classifier(0)
    group = zarr.open_group(out, mode="r")
    np.testing.assert_allclose(group["embedding"][:], direct_forward(model, spec, frames_of(dataset)),
                               rtol=1e-4, atol=1e-4)
    assert group.attrs["weights_source"] == "bundled" and len(group.attrs["weights_sha256"]) == 64


def test_store_opens_with_plain_zarr_and_dask_without_pvr_pipe(vit_store, tmp_path):
    out = vit_store
    program = f"""
import sys, zarr, dask.array as da
group = zarr.open_group({str(out)!r}, mode="r")
emb = da.from_zarr({str(out)!r}, component="embedding")
assert emb.shape == (96, 384) and str(emb.dtype) == "float16", emb
assert group["action"].shape == (96, 2) and group["reward"].shape == (96,) and group["state"].shape == (96, 6)
assert list(group["episode_start"][:]) == [0, 16, 32, 48, 64, 80]
assert group["is_first"][:].sum() == 6 and group["is_last"][:].sum() == 6
attrs = dict(group.attrs)
for key in ("encoder", "weights_sha256", "resolution", "normalization", "pooling", "source_manifest_sha256",
            "pipeline_version", "compute_precision"):
    assert key in attrs, key
assert float(abs(emb.mean().compute())) >= 0
assert not any(name.split(".")[0] in ("pipeline", "stages") for name in sys.modules)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


def test_step_arrays_match_the_dataset(dataset, tmp_path):
    import zarr

    group = zarr.open_group(run_encode(dataset, tmp_path / "s.zarr", model="pixels"), mode="r")
    episodes = list(iter_episodes(dataset))
    for name in ("action", "reward", "state", "is_first", "is_last", "is_terminal"):
        np.testing.assert_array_equal(group[name][:], np.concatenate([getattr(e, name) for e in episodes]))
    pixels = group["pixels"][:]
    assert pixels.shape == (96, 3, 64, 64) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, frames_of(dataset).transpose(0, 3, 1, 2))  # already 64 px


def store_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dask_with_two_workers_gives_the_same_bytes(dataset, tmp_path):
    in_process = run_encode(dataset, tmp_path / "a.zarr", model="random-vit", threads=1)
    on_dask = run_encode(dataset, tmp_path / "b.zarr", model="random-vit", workers=2, threads=1)
    assert store_bytes(tmp_path / "a.zarr") == store_bytes(tmp_path / "b.zarr")
    assert in_process != on_dask


def test_loader_processes_give_the_same_bytes_as_the_loader_thread(dataset, tmp_path):
    run_encode(dataset, tmp_path / "thread.zarr", model="random-vit", threads=1, batch_size=5)
    run_encode(dataset, tmp_path / "processes.zarr", model="random-vit", threads=1, batch_size=5, loaders=2)
    assert store_bytes(tmp_path / "thread.zarr") == store_bytes(tmp_path / "processes.zarr")


def test_resume_after_sigkill_gives_the_same_bytes(tmp_path):
    collect_toy(tmp_path / "ds", episodes=8, max_steps=10, episodes_per_shard=1)  # 8 units of 11 frames
    args = ["encode", "--model", "random-vit", "--dataset", tmp_path / "ds", "--quiet", "--precision", "fp32"]
    process = subprocess.Popen([PVR_PIPE, *map(str, args), "--out", str(tmp_path / "killed.zarr")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    progress = tmp_path / "killed.zarr.partial" / ".progress"
    deadline = time.time() + 300
    while not (progress.exists() and len(list(progress.iterdir())) >= 2):
        assert process.poll() is None and time.time() < deadline, "encode ended before it was killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed.zarr").exists()  # only the .partial store: nothing looks finished
    assert len(list(progress.iterdir())) < 8
    result = pvr_pipe(*args, "--out", tmp_path / "killed.zarr")
    assert result.returncode == 0, result.stderr
    assert pvr_pipe(*args, "--out", tmp_path / "straight.zarr").returncode == 0
    assert store_bytes(tmp_path / "killed.zarr") == store_bytes(tmp_path / "straight.zarr")
    assert not (tmp_path / "killed.zarr.partial").exists()


def test_info_describes_a_store(vit_store):
    result = pvr_pipe("info", vit_store, "--json")
    assert result.returncode == 0, result.stderr
    assert '"encoder": "random-vit"' in result.stdout and "random-init" in result.stdout


def test_bad_inputs(dataset, vit_store, tmp_path, monkeypatch):
    monkeypatch.setenv("PVR_PIPE_WEIGHTS", str(tmp_path / "no-weights"))
    assert_user_error(pvr_pipe("encode", "--model", "dino", "--dataset", dataset), "unknown model 'dino'",
                      "dinov2", "random-vit")
    assert_user_error(pvr_pipe("encode", "--model", "r3m", "--dataset", dataset, "--out", tmp_path / "r3m.zarr"),
                      "r3m_resnet50.pt", str(tmp_path / "no-weights"))
    assert_user_error(pvr_pipe("encode", "--model", "dinov2", "--dataset", dataset, "--out", tmp_path / "d.zarr"),
                      "not available offline", "--download")
    assert_user_error(pvr_pipe("encode", "--model", "pixels", "--dataset", tmp_path), "not a trajectory dataset")
    assert not (tmp_path / "r3m.zarr").exists() and not (tmp_path / "d.zarr.partial").exists()

    store = vit_store
    before = snapshot(store)
    assert_user_error(pvr_pipe("encode", "--model", "pixels", "--dataset", dataset, "--out", store),
                      "another model", "random-vit")
    other = tmp_path / "other"
    collect_toy(other, episodes=2, max_steps=15, seed=9)
    assert_user_error(pvr_pipe("encode", "--model", "random-vit", "--dataset", other, "--out", store),
                      "another model, dataset", "source_manifest_sha256")
    assert snapshot(store) == before

    small = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save({"r3m": {f"module.convnet.{k}": v for k, v in small.state_dict().items()}}, tmp_path / "rn18.pt")
    assert_user_error(pvr_pipe("encode", "--model", "r3m", "--weights", tmp_path / "rn18.pt", "--dataset", dataset,
                               "--out", tmp_path / "r3m.zarr"), "does not fit 'r3m'", "wrong shape")
    (tmp_path / "afile").write_text("keep")
    assert_user_error(pvr_pipe("encode", "--model", "pixels", "--dataset", dataset, "--out", tmp_path / "afile"),
                      "is a file")
    assert (tmp_path / "afile").read_text() == "keep"
    assert_user_error(pvr_pipe("encode", "--model", "pixels", "--dataset", dataset, "--batch-size", "0"),
                      "'batch_size'")


@pytest.mark.parametrize("member", ["action.npy", "frame.000003.png"])
def test_a_flipped_bit_in_a_shard_is_refused_before_anything_is_encoded(dataset, tmp_path, member):
    """encode checks each shard against the manifest's sha256 as it streams; a broken frame is
    named (it fails to decode before the shard's end is reached)."""
    import shutil
    import tarfile

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    shard = sorted(bad.glob("*.tar"))[1]
    with tarfile.open(shard) as tar:
        target = next(m for m in tar.getmembers() if m.name.endswith(member))
    data = bytearray(shard.read_bytes())
    data[target.offset_data + target.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    for loaders in ("0", "2"):   # raised in a loader process, reported by the main one
        result = pvr_pipe("encode", "--model", "pixels", "--dataset", bad, "--out", tmp_path / "s.zarr",
                          "--loaders", loaders)
        assert_user_error(result, shard.name, "corrupt", "re-collect")
        assert not (tmp_path / "s.zarr").exists()


def test_a_changed_or_missing_chunk_is_an_error_never_zeros(dataset, tmp_path):
    store = run_encode(dataset, tmp_path / "s.zarr", model="state")
    verified = pvr_pipe("info", store, "--verify", "--json")
    assert verified.returncode == 0 and "all array hashes match" in verified.stdout
    chunks = sorted((tmp_path / "s.zarr" / "embedding" / "c").rglob("*"))
    middle = [c for c in chunks if c.is_file()][1]
    middle.unlink()                                   # Zarr alone would read these rows as zeros
    for result in (pvr_pipe("info", store, "--verify"),
                   pvr_pipe("train", "--store", store, "--world-model", "tdmpc", "--preset", "xs",
                            "--updates", "1", "--out", tmp_path / "run")):
        assert_user_error(result, "damaged", "'embedding'", "re-encode")
    assert not (tmp_path / "run").exists()


def test_fsspec_urls_for_dataset_and_store(dataset, tmp_path):
    import zarr

    out = run_encode(f"file://{dataset}", f"file://{tmp_path}/url.zarr", model="pixels")
    assert out == f"file://{tmp_path}/url.zarr"
    group = zarr.open_group(str(tmp_path / "url.zarr"), mode="r")
    assert group["pixels"].shape == (96, 3, 64, 64)
    assert not (tmp_path / "url.zarr.partial").exists()


def test_same_model_with_other_weights_does_not_reuse_a_store(dataset, tmp_path):
    from pipeline.errors import UserError

    for seed in (0, 1):
        torch.manual_seed(seed)
        model = timm.create_model("resnet18", pretrained=False, num_classes=0)
        torch.save({"r3m": {f"module.convnet.{k}": v for k, v in model.state_dict().items()}}, tmp_path / f"w{seed}.pt")
    out = run_encode(dataset, tmp_path / "r3m.zarr", model="r3m-rn18", weights=tmp_path / "w0.pt")
    before = snapshot(tmp_path / "r3m.zarr")
    with pytest.raises(UserError, match="weights_sha256"):
        run_encode(dataset, out, model="r3m-rn18", weights=tmp_path / "w1.pt")
    assert snapshot(tmp_path / "r3m.zarr") == before
