"""Where a PVR's weights come from, loaded safely, identified by sha256.

Order: an explicit file (`--weights`), the weights directory (`$PVR_PIPE_WEIGHTS`, default
`~/.cache/pvr-pipe/weights`) under the entry's file name, a file a package ships, the Hugging
Face hub cache of a timm tag, and, only when asked (`--download`), the hub itself. Never silently
random: missing weights are a `UserError` saying which file to get and where to put it.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.encoders.spec import EncoderSpec, StateDict
from pipeline.errors import UserError
from pipeline.storage.manifest import sha256_file


@dataclass(frozen=True)
class WeightsFile:
    path: Path | None   # None: timm fetched them from the hub (`--download`)
    sha256: str
    source: str         # how they were found: "explicit", "weights-dir", "bundled", "hub-cache", ...


def weights_dir() -> Path:
    return Path(os.environ.get("PVR_PIPE_WEIGHTS", Path.home() / ".cache" / "pvr-pipe" / "weights"))


def local_file_name(spec: EncoderSpec) -> str:
    return spec.weights_filename or f"{spec.name}.safetensors"


def find_weights(spec: EncoderSpec, explicit: Path | None = None) -> WeightsFile | None:
    """The weights file to load, or None when only the hub can provide them (timm tags)."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise UserError(f"weights file '{explicit}' not found; pass an existing checkpoint to --weights")
        return WeightsFile(Path(explicit), sha256_file(Path(explicit)), "explicit")
    candidate = weights_dir() / local_file_name(spec)
    if candidate.is_file():
        return WeightsFile(candidate, sha256_file(candidate), "weights-dir")
    if spec.weights == "bundled":
        path = Path(spec.bundled_path())
        return WeightsFile(path, sha256_file(path), "bundled")
    if spec.weights == "timm":
        cached = _hub_cache_file(spec.architecture)
        if cached:
            return WeightsFile(cached, sha256_file(cached), "hub-cache")
        return None
    raise UserError(f"weights for '{spec.name}' not found: put {local_file_name(spec)} "
                    f"(from {spec.weights_url}) into {weights_dir()} (or set PVR_PIPE_WEIGHTS), "
                    "or pass --weights FILE")


def missing_hub_weights(spec: EncoderSpec) -> UserError:
    return UserError(
        f"weights for '{spec.name}' ({spec.architecture}) are not available offline: pass --download to "
        f"fetch them from the Hugging Face hub, or put the model's safetensors file at "
        f"{weights_dir() / local_file_name(spec)} (or pass --weights FILE)")


def read_state_dict(path: Path) -> StateDict:
    """A checkpoint as tensors only: safetensors, or torch.load with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():   # torch warns about pickle protocols on its way to failing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):   # not what torch.save writes: say so, not torch's advice
            raise UserError(f"weights file '{path}' cannot be read as a checkpoint (neither safetensors nor "
                            "a torch.save file)") from None
        # torch's own message advises weights_only=False, which would run the file's code
        raise UserError(f"weights file '{path}' is a pickle that torch's tensors-only loader refuses (Python "
                        "objects besides tensors, or a newer pickle protocol) and pvr-pipe never runs a file's code "
                        "to load it; save its state dict with safetensors.torch.save_file and pass that") from None
    except Exception as error:  # any unreadable checkpoint is the user's file to fix
        raise UserError(f"weights file '{path}' cannot be read as a checkpoint "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None


def load_into(model: torch.nn.Module, state: StateDict, spec: EncoderSpec, path: Path) -> None:
    """Strict load: every key present, none extra, every shape equal; else a `UserError`."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(part for part in (
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            (f"{len(wrong)} with wrong shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
             f"vs {tuple(expected[wrong[0]].shape)})") if wrong else "") if part)
        raise UserError(f"weights file '{path}' does not fit '{spec.name}' ({spec.architecture}): {details}")
    model.load_state_dict(state, strict=True)


def _hub_cache_file(architecture: str) -> Path | None:
    import timm
    from huggingface_hub import try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(architecture).hf_hub_id
    if not hub_id:
        return None
    for filename in ("open_clip_model.safetensors", "model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None
