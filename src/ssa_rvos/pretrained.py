"""Trained models by name: the bundled SynthRef model, checkpoint files, and files on the Hugging Face Hub.

A model is named by one of

* a bundled name (:data:`BUNDLED`): weights shipped inside this package, used offline; ``None`` means
  :data:`DEFAULT_MODEL`;
* a path: one of our ``.safetensors`` checkpoints (``ssa-rvos convert``, ``ssa-rvos train``), or a folder
  holding ``model.safetensors`` (a training checkpoint ``runs/X/checkpoints/step_N``);
* ``hf://OWNER/REPO/PATH/IN/REPO.safetensors`` (optionally ``@REVISION`` at the end): downloaded once into
  the Hugging Face cache with :func:`huggingface_hub.hf_hub_download`, then read from there;
* a released name of the authors (:data:`ssa_rvos.releases.RELEASES`, e.g. ``ssa_convnext_large.mevis``) or
  an ``https://`` URL (optionally ``#sha256=<hex>``): downloaded once into our cache, converted and
  verified on every load (:mod:`ssa_rvos.download`).

Every form ends in the same :func:`ssa_rvos.checkpoint.load_model`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED", "DEFAULT_MODEL", "bundled_path", "default_selection", "file_sha256", "list_pretrained",
           "load_pretrained", "resolve_weights"]

# name -> (file under ssa_rvos/weights, its SHA-256): a damaged or replaced file is refused
BUNDLED: dict[str, tuple[str, str]] = {
    "ssa_tiny.synthref": ("ssa_tiny_synthref.safetensors", "6bfb2916216c897c2db92e7b8b87ca43491f0764019e7c5ab202726311c34a57"),
}
#: name -> (what it is, what it scores), for ``ssa-rvos models`` (the figures of docs/synthref.md)
BUNDLED_INFO: dict[str, tuple[str, str]] = {
    "ssa_tiny.synthref": ("tiny SSA trained on SynthRef on a CPU (the default; a demo, not a useful model)",
                          "SynthRef held-out J&F 65.3"),
}
DEFAULT_MODEL = "ssa_tiny.synthref"
HF_PREFIX = "hf://"


def list_pretrained() -> list[str]:
    """Every model name: the bundled ones, then the authors' released ones."""
    from .releases import RELEASES

    return sorted(BUNDLED) + sorted(RELEASES)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and modification time: the file is hashed once per process, and again if it changes.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, computed once per process while its size and modification time stay the same."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def default_selection(name_or_path: str | os.PathLike | None) -> str:
    """The query selection a model is meant to be used with: a release's own (``top1`` for the
    Ref-YouTube-VOS checkpoint), else ``union``."""
    from .releases import RELEASES

    release = RELEASES.get(str(name_or_path)) if name_or_path is not None else None
    return release.selection if release is not None else "union"


def bundled_path(name: str) -> Path:
    """The file of a bundled model; FileNotFoundError if this installation lacks it."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; available: {', '.join(list_pretrained())}")
    file, sha256 = BUNDLED[name]
    path = Path(str(resources.files("ssa_rvos") / "weights" / file))
    if not path.is_file():
        raise FileNotFoundError(f"model {name}: its weights file {file} is missing from this installation")
    digest = file_sha256(path)
    if digest != sha256:
        raise ValueError(f"model {name}: {path} has SHA-256 {digest[:12]}..., expected {sha256[:12]}... "
                         "(a damaged or replaced file; reinstall the package)")
    return path


def _hf_download(spec: str) -> Path:
    rest = spec[len(HF_PREFIX):]
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"model {spec!r}: expected hf://OWNER/REPO/FILE.safetensors[@REVISION]")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision))


def resolve_weights(name_or_path: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The local checkpoint file a model name or path stands for (see the module docstring)."""
    from .build import list_models
    from .releases import RELEASES

    spec = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if spec in BUNDLED:
        return bundled_path(spec)
    if spec.startswith(HF_PREFIX):
        return _hf_download(spec)
    if spec in RELEASES or spec.startswith(("https://", "http://")):
        from .download import fetch

        if spec in RELEASES and RELEASES[spec].kind != "ssa":
            raise ValueError(f"model {spec}: a training initialisation (model.init_from={spec}), not a model to "
                             "segment with")
        return fetch(spec, progress=progress)
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        raise FileNotFoundError(f"model {spec}: a folder without model.safetensors")
    if spec in list_models():
        raise ValueError(f"model {spec}: an architecture without trained weights; name a checkpoint file or one of "
                         f"{', '.join(list_pretrained())}")
    raise FileNotFoundError(f"model {spec}: no such file, and not a known model ({', '.join(list_pretrained())})")


def load_pretrained(name_or_path: str | os.PathLike | None = None, *, device=None):
    """Load a trained :class:`~ssa_rvos.modeling.SSA` (in eval mode) by name or path."""
    from .checkpoint import load_model

    return load_model(resolve_weights(name_or_path), device=device).eval()
