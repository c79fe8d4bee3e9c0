"""Monocular depth networks loaded from local files, for the ``model`` depth ground truth.

Three kinds, chosen by what ``path`` is:

- a folder with ``config.json``: a Hugging Face transformers depth model
  (Depth Anything V1/V2, DPT, GLPN, ZoeDepth, ...), loaded with
  ``AutoModelForDepthEstimation`` and ``AutoImageProcessor`` from that folder
  with ``local_files_only=True`` (needs the ``depth-models`` extra);
- a folder with ``hubconf.py``: a torch.hub repository checked out locally
  (MiDaS), loaded with ``torch.hub.load(path, name, source="local")``; any
  weights its entry point fetches with ``torch.hub.load_state_dict_from_url``
  are looked up by file name in a local folder instead (``weights``, by
  default ``<path>/checkpoints`` and torch.hub's own ``checkpoints`` folder);
- a file: TorchScript, an exported program (``.pt2``), or the state dict of a
  registered architecture.

Nothing is ever downloaded: the transformers loaders run with
``local_files_only`` and the hub's URL loader is replaced for the duration of
the load, so a missing file is an error that says where to put it
(docs/data.md: "Depth models" shows how to fetch weights once on a
connected machine).

Every network here maps a batch of RGB uint8 images ``(N, H, W, 3)`` to its
raw output ``(N, H, W)`` float64 at the images' size, and says what that
output is (``native_output``): ``"inverse"`` for relative inverse depth
(disparity: Depth Anything, DPT, MiDaS), ``"depth"`` for metres (GLPN,
ZoeDepth, metric Depth Anything).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

#: transformers ``model_type`` -> what its ``predicted_depth`` is (metric Depth Anything is decided by its config).
TRANSFORMERS_OUTPUT = {
    "depth_anything": "inverse", "dpt": "inverse", "glpn": "depth", "zoedepth": "depth", "depth_pro": "depth",
}
INSTALL_HINT = "install the optional dependencies with: pip install 'losslab[depth-models]'"


class DepthNet:
    """A loaded network: ``__call__(images, bgs) -> (N, H, W)`` raw output, and what that output is."""

    native_output: str = "depth"
    description: str = "network"

    def __call__(self, images: np.ndarray, bgs: np.ndarray | None = None) -> np.ndarray:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} does not define __call__")


def _to_numpy(y: Any, n: int, size: tuple[int, int], where: str) -> np.ndarray:
    """A network's output as (N, H, W) float64 at ``size``, with a clear error for any other shape."""
    import torch
    import torch.nn.functional as F

    if isinstance(y, dict):
        if "depth" not in y:
            raise ValueError(f"model depth: {where} returned a dict without 'depth' ({list(y)})")
        y = y["depth"]
    elif isinstance(y, list | tuple):
        y = y[0]
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"model depth: {where} returned {type(y).__name__}, not a tensor")
    y = y.float().cpu()
    if y.ndim == 3:
        y = y[:, None]
    if y.ndim != 4 or y.shape[0] != n or y.shape[1] != 1:
        raise ValueError(
            f"model depth: {where}: expected an output of shape ({n}, 1, h, w) or ({n}, h, w), got {tuple(y.shape)}"
        )
    if tuple(y.shape[-2:]) != size:
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    return y[:, 0].double().numpy()


class TensorNet(DepthNet):
    """A plain ``nn.Module``-like callable fed normalised RGB in [0, 1] (TorchScript, export, hub, state dict)."""

    def __init__(self, net: Any, *, description: str, native_output: str = "depth", channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_size: int | None = None, device: str = "cpu", max_batch: int | None = None) -> None:
        self.net, self.description, self.native_output = net, description, native_output
        self.max_batch = max_batch
        self.channels, self.input_size, self.device = channels, input_size, device
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None

    def _tensor(self, images: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if self.mean is not None and self.std is not None:
            t = (t - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        return t

    def __call__(self, images: np.ndarray, bgs: np.ndarray | None = None) -> np.ndarray:
        step = self.max_batch or len(images)
        if len(images) > step:
            return np.concatenate([self(images[i : i + step], None if bgs is None else bgs[i : i + step])
                                   for i in range(0, len(images), step)])
        return self._forward(images, bgs)

    def _forward(self, images: np.ndarray, bgs: np.ndarray | None) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        n, h, w = images.shape[:3]
        x = self._tensor(images)
        if self.channels == 6:
            x = torch.cat([self._tensor(bgs if bgs is not None else images), x], dim=1)
        if self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        with torch.inference_mode():
            y = self.net(x.to(self.device))
        return _to_numpy(y, n, (h, w), self.description)


class TransformersNet(DepthNet):
    """A transformers depth model and its image processor, from a local folder."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        try:
            import transformers
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError:
            raise ValueError(f"model depth: {folder} is a transformers model, but transformers is not "
                             f"installed; {INSTALL_HINT}") from None
        self.description = f"transformers model {folder}"
        with _offline(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            try:
                self.processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
                model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
                first = " ".join(str(exc).split())[:400]
                raise ValueError(
                    f"model depth: {folder} cannot be loaded as a transformers depth model "
                    f"({type(exc).__name__}: {first}); the folder needs config.json, the weights "
                    "(model.safetensors) and preprocessor_config.json, e.g. from "
                    "huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf --local-dir DIR"
                ) from None
            finally:
                transformers.logging.set_verbosity(verbosity)
                transformers.logging.enable_progress_bar()
        self.model = model.eval().to(device)
        self.device = device
        config = model.config
        kind = getattr(config, "model_type", "")
        native = TRANSFORMERS_OUTPUT.get(kind)
        if kind == "depth_anything" and getattr(config, "depth_estimation_type", "relative") == "metric":
            native = "depth"
        self.model_type = kind
        self.native_output = native or "unknown"

    def __call__(self, images: np.ndarray, bgs: np.ndarray | None = None) -> np.ndarray:
        import inspect

        import torch

        n, h, w = images.shape[:3]
        inputs = self.processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device))
        post = getattr(self.processor, "post_process_depth_estimation", None)
        if post is None:
            return _to_numpy(out.predicted_depth, n, (h, w), self.description)
        kwargs: dict[str, Any] = {"target_sizes": [(h, w)] * n}
        if "source_sizes" in inspect.signature(post).parameters:  # ZoeDepth: removes its padding
            kwargs["source_sizes"] = [(h, w)] * n
        out.predicted_depth = out.predicted_depth.float().cpu()
        maps = [r["predicted_depth"].reshape(h, w) for r in post(out, **kwargs)]
        return torch.stack(maps).double().numpy()


@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face's offline switches on while loading (belt and braces next to ``local_files_only``)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in names}
    os.environ.update({k: "1" for k in names})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _local_hub_weights(folders: Sequence[Path]) -> Iterator[None]:
    """Replace torch.hub's URL loaders: weights come from ``folders`` by file name, or the load fails."""
    import torch
    import torch.hub as hub

    def from_folders(url: str, model_dir: str | None = None, map_location: Any = None, progress: bool = True,
                     check_hash: bool = False, file_name: str | None = None, weights_only: bool = True) -> Any:
        name = file_name or os.path.basename(urlparse(url).path)
        for folder in folders:
            candidate = Path(folder) / name
            if candidate.is_file():
                return torch.load(str(candidate), map_location=map_location or "cpu", weights_only=True)
        where = ", ".join(str(f) for f in folders)
        raise ValueError(
            f"model depth: the hub entry point wants the weights {name} ({url}), which are not in {where}; "
            f"download that file once on a connected machine into one of these folders (or pass weights=DIR); "
            "losslab never downloads at run time"
        )

    def no_download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise ValueError(f"model depth: the hub entry point tried to download {url}; losslab never downloads "
                         f"at run time: put the file at {dst} beforehand")

    saved = hub.load_state_dict_from_url, hub.download_url_to_file
    hub.load_state_dict_from_url, hub.download_url_to_file = from_folders, no_download
    try:
        yield
    finally:
        hub.load_state_dict_from_url, hub.download_url_to_file = saved


def load_hub(folder: Path, name: str | None, hub_params: dict[str, Any], weights: str | None,
             **tensor: Any) -> DepthNet:
    """``torch.hub.load(folder, name, source="local", **hub_params)`` with weights from local folders only."""
    import torch

    if not name:
        raise ValueError(f"model depth: {folder} is a torch.hub folder (hubconf.py); name its entry point with "
                         "name=..., e.g. name=MiDaS_small (see the entry points in its hubconf.py)")
    folders = [Path(weights).expanduser()] if weights else [folder / "checkpoints",
                                                            Path(torch.hub.get_dir()) / "checkpoints"]
    try:
        with _local_hub_weights(folders), _offline(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.hub.load(str(folder), name, source="local", **hub_params)
    except ValueError:
        raise
    except Exception as exc:  # a hubconf may raise anything; name the entry point and the folder
        first = " ".join(str(exc).split())[:400]
        raise ValueError(f"model depth: torch.hub.load({str(folder)!r}, {name!r}, source='local') failed "
                         f"({type(exc).__name__}: {first})") from None
    if hasattr(net, "eval"):
        net = net.eval()
    if hasattr(net, "to"):
        net = net.to(tensor.get("device", "cpu"))
    tensor.setdefault("native_output", "inverse")  # MiDaS predicts relative inverse depth
    return TensorNet(net, description=f"torch.hub model {name} from {folder}", **tensor)


def load_file(path: Path, architecture: str | None, arch_params: dict[str, Any], **tensor: Any) -> DepthNet:
    """TorchScript, an exported program (``.pt2``), or a registered architecture's state dict."""
    import torch

    device = tensor.get("device", "cpu")
    if architecture is None and path.suffix == ".pt2":
        try:
            net = torch.export.load(str(path)).module()
        except Exception as exc:  # any failure means "not an exported program"
            raise ValueError(
                f"model depth: {path} cannot be loaded with torch.export.load ({type(exc).__name__}: "
                f"{exc}); save it with torch.export.save(torch.export.export(net, args), path)"
            ) from None
        # an exported program's batch size is usually fixed at the one it was traced with
        return TensorNet(net.to(device), description=f"exported program {path}", max_batch=1, **tensor)
    if architecture is None:
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream; the user chose it
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises several types for a file that is not an archive
            raise ValueError(
                f"model depth: {path} is not a TorchScript archive ({type(exc).__name__}); save the "
                "network with torch.jit.script(net).save(path) (or torch.export.save to a .pt2 file), "
                "or, for a state dict, also pass architecture=<registered name>"
            ) from None
        return TensorNet(net.eval().to(device), description=f"TorchScript {path}", **tensor)
    from losslab.core.plugin.manager import load_catalog
    from losslab.core.plugin.registry import RegistryError

    try:
        net = load_catalog().create("architecture", architecture, **arch_params)
    except RegistryError as exc:
        raise ValueError(f"model depth: {exc}") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"model depth: {path} cannot be read as a state dict ({type(exc).__name__}: {exc}); "
            "save it with torch.save(net.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a losslab checkpoint
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:400]
        raise ValueError(
            f"model depth: the weights in {path} do not fit architecture {architecture!r} "
            f"with params {arch_params}: {first}"
        ) from None
    return TensorNet(net.eval().to(device), description=f"{architecture} weights {path}", **tensor)


def load_depth_net(path: Path, *, name: str | None = None, hub_params: dict[str, Any] | None = None,
                   weights: str | None = None, architecture: str | None = None,
                   arch_params: dict[str, Any] | None = None, device: str = "cpu", **tensor: Any) -> DepthNet:
    """The network at ``path`` (see the module docstring for how its kind is chosen)."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return TransformersNet(path, device=device)
        if (path / "hubconf.py").is_file():
            return load_hub(path, name, dict(hub_params or {}), weights, device=device, **tensor)
        raise ValueError(
            f"model depth: {path} is a folder without config.json (a transformers model) or hubconf.py (a "
            "torch.hub repository); see docs/data.md, 'Depth models', for how to fetch one"
        )
    if not path.is_file():
        raise ValueError(
            f"model depth: nothing at {path}; pass path=<a transformers model folder, a torch.hub folder, or a "
            "TorchScript / state dict file>; models are never downloaded at run time (docs/data.md, 'Depth "
            "models', shows how to fetch one once, e.g. huggingface-cli download "
            "depth-anything/Depth-Anything-V2-Small-hf --local-dir DIR)"
        )
    return load_file(path, architecture, dict(arch_params or {}), device=device, **tensor)
