"""Released checkpoints by name: download once, convert, cache, verify on every load.

    path = fetch_release("ssa_convnext_large.mevis")     # what resolve_weights / --model do with a name

Names come from :data:`ssa_rvos.releases.RELEASES`; a plain ``https://`` URL (optionally ending in
``#sha256=<hex>``) is fetched the same way. The cache (``$SSA_RVOS_CACHE``, else the platform's cache
folder + ``ssa-rvos``) holds one folder per name:

* ``model.safetensors``: the converted file, what every later run loads;
* ``download.json``: where it came from, the SHA-256 and size of the downloaded file and of the
  converted one. Each load re-hashes ``model.safetensors`` (once per process) against the record: a
  changed file is an error, never loaded.

The download goes to ``<filename>.partial`` beside them and resumes from there when interrupted (an
HTTP range request; gdown's resume for Google Drive); its size is checked against the server's
``Content-Length`` and the registry's ``size``, its hash against the registry's ``sha256`` when one is
pinned. Then the pickle is converted (``torch.load(weights_only=True)``, :mod:`ssa_rvos.checkpoint`),
and deleted.

Offline (``SSA_RVOS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, or no network), a name missing from the cache is
an :class:`OfflineError` naming the file to download by hand and the ``ssa-rvos convert`` command that
puts it where the name finds it. A converted file placed there by hand is accepted, and its hash is
recorded on first use.

Downloaders are one small interface (:class:`Downloader`: ``fetch(source, partial, progress)``), so the
tests serve files from a loopback HTTP server and replace Google Drive without a network.
"""

import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from .fileio import atomic_write_text
from .pretrained import file_sha256
from .releases import RELEASES, Release

__all__ = ["CacheError", "DownloadError", "Downloader", "GoogleDriveDownloader", "HTTPDownloader", "OfflineError",
           "cache_dir", "cached_models", "fetch", "fetch_release", "is_offline", "release_for_url"]

MODEL_FILE = "model.safetensors"
RECORD_FILE = "download.json"
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed or gave a wrong file (one line, naming it)."""


class OfflineError(DownloadError):
    """A released model is not in the cache and nothing may (or can) be downloaded."""


class CacheError(ValueError):
    """A cached file does not match what was recorded when it was downloaded."""


def cache_dir() -> Path:
    """``$SSA_RVOS_CACHE``, else the platform's user cache folder + ``ssa-rvos``."""
    if os.environ.get("SSA_RVOS_CACHE"):
        return Path(os.environ["SSA_RVOS_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ssa-rvos"


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("SSA_RVOS_OFFLINE", "HF_HUB_OFFLINE"))


# ------------------------------------------------------------------------------------------------ downloaders


class Downloader:
    """Fetch ``source`` into ``partial``, continuing from the bytes already there; return the total size
    the server announced (None if it did not)."""

    def fetch(self, source: str, partial: Path, *, progress: bool = True) -> int | None:  # pragma: no cover
        raise NotImplementedError


class HTTPDownloader(Downloader):
    """Plain HTTP(S) with resume: a range request for the rest of an interrupted ``.partial`` file."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def fetch(self, source: str, partial: Path, *, progress: bool = True) -> int | None:
        from tqdm import tqdm

        have = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(source, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 - http(s) only, checked
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the range starts at the end: the file is complete
                return have
            raise DownloadError(f"{source}: HTTP {e.code} {e.reason}") from None
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0  # the server sent the whole file: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(partial, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                    desc=f"download {partial.name.removesuffix('.partial')}") as bar:
                while block := response.read(_CHUNK):
                    f.write(block)
                    bar.update(len(block))
        return total


class GoogleDriveDownloader(Downloader):
    """Google Drive files (``gdrive:<id>``) through gdown, which handles the confirmation step Drive puts
    before large files; gdown resumes an interrupted ``.partial`` file."""

    def fetch(self, source: str, partial: Path, *, progress: bool = True) -> int | None:
        try:
            import gdown
        except ImportError:
            raise DownloadError('downloading from Google Drive needs gdown: pip install -e ".[weights]" '
                                "(or pip install gdown)") from None
        file_id = source.removeprefix("gdrive:")
        try:
            done = gdown.download(id=file_id, output=str(partial), quiet=not progress, resume=partial.exists())
        except Exception as e:  # noqa: BLE001 - gdown raises many types (network, Drive's quota pages)
            raise DownloadError(f"Google Drive file {file_id}: {' '.join(str(e).split()) or type(e).__name__}") from None
        if not done:
            raise DownloadError(f"Google Drive file {file_id}: the download failed")
        return None


def _downloader_for(source: str) -> Downloader:
    if source.startswith("gdrive:"):
        return GoogleDriveDownloader()
    if source.startswith(("https://", "http://")):
        return HTTPDownloader()
    raise DownloadError(f"{source}: unsupported source (expected gdrive:ID or an http(s) URL)")


# ---------------------------------------------------------------------------------------------------- cache


def _folder(name: str) -> Path:
    return cache_dir() / name


def _read_record(folder: Path) -> dict | None:
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: unreadable download record ({e}); delete the folder to download again") from None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise CacheError(f"{path}: not a download record; delete the folder to download again")
    return record


def _write_record(folder: Path, record: dict) -> None:
    atomic_write_text(folder / RECORD_FILE, json.dumps(record, indent=1) + "\n")


def _verified(folder: Path, name: str) -> Path:
    """The cached converted file, checked against its record (a file placed by hand: recorded now)."""
    target = folder / MODEL_FILE
    record = _read_record(folder)
    digest = file_sha256(target)
    if record is None:
        _write_record(folder, {"name": name, "source": "placed in the cache by hand", "sha256": digest,
                               "size": target.stat().st_size})
        print(f"{name}: recorded {target} (SHA-256 {digest})", file=sys.stderr)
    elif digest != record["sha256"]:
        raise CacheError(f"{name}: {target} has changed since it was downloaded (SHA-256 {digest[:12]}..., recorded "
                         f"{record['sha256'][:12]}...); delete {folder} to download it again")
    return target


def cached_models() -> list[tuple[str, Path, dict | None]]:
    """(name, converted file, record) of every model in the cache, by name."""
    root = cache_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / MODEL_FILE).is_file():
            try:
                record = _read_record(folder)
            except CacheError:
                record = None
            found.append((folder.name, folder / MODEL_FILE, record))
    return found


def release_for_url(url: str) -> Release:
    """A registry-like entry for a plain URL (``#sha256=<hex>`` pins the file): cached under a name made
    of the file name and a hash of the URL."""
    base, _, fragment = url.partition("#")
    pinned = fragment.removeprefix("sha256=").lower() if fragment.startswith("sha256=") else None
    if fragment and pinned is None:
        raise ValueError(f"{url}: the only fragment understood is #sha256=<hex>")
    if pinned is not None and (len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned)):
        raise ValueError(f"{url}: #sha256= needs 64 hexadecimal digits")
    filename = base.rstrip("/").rsplit("/", 1)[-1] or "download"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)[:80]
    name = f"url-{hashlib.sha256(base.encode()).hexdigest()[:12]}-{stem}"
    return Release(name=name, description=f"downloaded from {base}", source=base, filename=filename, sha256=pinned)


def fetch(spec: str, *, progress: bool = True, downloader: Downloader | None = None) -> Path:
    """The cached converted file of a released name or an http(s) URL, downloaded and converted if needed."""
    if spec in RELEASES:
        return fetch_release(RELEASES[spec], progress=progress, downloader=downloader)
    return fetch_release(release_for_url(spec), progress=progress, downloader=downloader)


def fetch_release(release: Release, *, progress: bool = True, downloader: Downloader | None = None) -> Path:
    """See the module docstring. Returns the path of the converted, verified ``model.safetensors``."""
    folder = _folder(release.name)
    target = folder / MODEL_FILE
    if target.is_file():
        return _verified(folder, release.name)
    by_hand = (f"download {release.filename} from {release.url} and run: ssa-rvos convert {release.filename} "
               f"-o {target}" + ("" if release.kind == "ssa" else " --init"))
    if is_offline():
        raise OfflineError(f"{release.name} is not in the cache and downloads are off (SSA_RVOS_OFFLINE / "
                           f"HF_HUB_OFFLINE): {by_hand}")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{release.filename}.partial"
    try:
        total = (downloader or _downloader_for(release.source)).fetch(release.source, partial, progress=progress)
    except urllib.error.URLError as e:
        raise OfflineError(f"{release.name}: the network is unreachable ({e.reason}): {by_hand}") from None
    except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
        raise DownloadError(f"{release.name}: the download stopped ({type(e).__name__}); run again to resume "
                            "it") from None
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{release.name}: got {size:,} of {total:,} bytes; run again to resume the download")
    if release.size is not None and size != release.size:
        partial.unlink()
        raise DownloadError(f"{release.name}: the downloaded file has {size:,} bytes, expected {release.size:,}")
    digest = file_sha256(partial)
    if release.sha256 is not None and digest != release.sha256:
        partial.unlink()
        raise DownloadError(f"{release.name}: the downloaded file has SHA-256 {digest}, expected {release.sha256}")
    print(f"{release.name}: downloaded {release.filename} ({size:,} bytes, SHA-256 {digest})", file=sys.stderr)
    converted = convert_release(release, partial, target)
    _write_record(folder, {"name": release.name, "source": release.source, "filename": release.filename,
                           "downloaded_sha256": digest, "downloaded_size": size, "sha256": converted,
                           "size": target.stat().st_size, "date": time.strftime("%Y-%m-%d %H:%M:%S %z")})
    partial.unlink()  # the converted file is what later runs load
    return target


def convert_release(release: Release, source: Path, target: Path) -> str:
    """Convert a downloaded file into ``target`` (our format); returns the converted file's SHA-256.

    An ``ssa`` release: the whole model, with the release's CLIP, word-mask rule and test size, its
    name in the metadata. An ``init`` release: the tensors renamed to our keys where they map (what
    ``model.init_from`` reads). A file that already is safetensors (a URL to one of ours) is checked by
    loading it and kept as it is."""
    from .checkpoint import convert_official_checkpoint, load_model, save_model

    if _is_safetensors(source):
        load_model(source)  # validates it
        os.replace(source, target)
        return file_sha256(target)
    if release.kind == "init":
        _convert_init(source, target, release)
        return file_sha256(target)
    from .modeling import ClipConfig

    clip = ClipConfig(model_name=release.clip_model, architecture=release.clip_architecture,
                      word_mask_rule=release.word_mask)
    model, _ = convert_official_checkpoint(source, clip=clip)
    if release.test_short_side is not None:
        model.config = replace(model.config, test_short_side=release.test_short_side)
    save_model(model, target, extra={"converted_from": release.filename, "release": release.name,
                                     "selection": release.selection})
    return file_sha256(target)


def _convert_init(source: Path, target: Path, release: Release) -> None:
    from .checkpoint import official_to_ours, read_official_checkpoint, save_state_dict_atomic

    state = read_official_checkpoint(source)
    ours = {}
    for key, value in state.items():
        name = official_to_ours(key) or key  # unmapped keys stay (model.init_from reports them)
        ours[name] = value.contiguous()
    save_state_dict_atomic(ours, target, {"converted_from": release.filename, "release": release.name,
                                          "kind": "init"})


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length and a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)
