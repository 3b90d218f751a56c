"""The authors' released checkpoints, by name: pure data (read by :mod:`ssa_rvos.download`).

Names are ``arch.tag`` as in open_clip and timm. Each entry says where the file comes from, what it is,
the J&F the authors report for it and on which split, and the inference defaults it needs. The files are
the detectron2 pickles of the authors' code (Tavarich/SSA, links in its README); they are converted to
our safetensors format once, right after the download (:func:`ssa_rvos.download.fetch_release`).

``sha256`` pins the downloaded file. Nobody on this project has downloaded the real files yet (the build
machines have no internet), so the pins are empty: the first download records its hash in the cache and
prints it, every later load verifies the converted file against the record, and once someone reports the
hash of a real file it goes here and every download is checked against it.
"""

from dataclasses import dataclass, field

__all__ = ["RELEASES", "Release"]

#: The CLIP every released SSA checkpoint was trained with (open_clip architecture name).
PAPER_CLIP = "convnext_large_d_320"


@dataclass(frozen=True)
class Release:
    """One released file.

    source: ``gdrive:<file id>`` (Google Drive) or an ``https://`` URL. kind: ``ssa`` (a whole SSA model,
    for ``segment`` / ``predict``) or ``init`` (a training initialisation for ``model.init_from``).
    reported: (benchmark split, J&F in percent) as the authors report them. selection, test_short_side,
    word_mask: the inference defaults (query selection, test resize, word-mask rule of the converter).
    size: expected bytes (None: unknown). clip_model / clip_architecture: the CLIP the converter builds
    (an open_clip name; an architecture dict for CLIPs open_clip does not know, as in the tests)."""

    name: str
    description: str
    source: str
    filename: str
    kind: str = "ssa"
    reported: tuple[tuple[str, float], ...] = ()
    selection: str = "union"
    test_short_side: int | None = None
    word_mask: str = "eot"
    sha256: str | None = None
    size: int | None = None
    clip_model: str = PAPER_CLIP
    clip_architecture: dict | None = field(default=None, hash=False, compare=False)

    @property
    def url(self) -> str:
        """Where a person downloads the file by hand."""
        if self.source.startswith("gdrive:"):
            return f"https://drive.google.com/file/d/{self.source.removeprefix('gdrive:')}/view"
        return self.source

    def reported_text(self) -> str:
        return "; ".join(f"{split} J&F {value:.2f}" for split, value in self.reported) or "-"


def _entries(*releases: Release) -> dict[str, Release]:
    return {r.name: r for r in releases}


RELEASES: dict[str, Release] = _entries(
    Release(
        name="ssa_convnext_large.mevis",
        description="SSA, CLIP ConvNeXt-L, MeViS fine-tuning (from the COCO CLIP-Mask2Former)",
        source="gdrive:1_TVp9Mdt0one-lknRsPDROqL5ne4xz42", filename="ssa_mevis.pth",
        reported=(("MeViS valid (server)", 48.56),), selection="union", test_short_side=448),
    Release(
        name="ssa_convnext_large.mevis_joint",
        description="SSA, CLIP ConvNeXt-L, MeViS + Ref-YouTube-VOS joint training",
        source="gdrive:1GmCQd80OIY4fSNOLEmXbihTqqjwuLz29", filename="ssa_mevis_joint.pth",
        reported=(("MeViS valid (server)", 49.37),), selection="union", test_short_side=448),
    Release(
        name="ssa_convnext_large.ytvos",
        description="SSA, CLIP ConvNeXt-L, Ref-YouTube-VOS (also evaluated on Ref-DAVIS17)",
        source="gdrive:1--gAGOjmRxyeA7kNoX9dsk0og5gkF5k-", filename="ssa_ytvos.pth",
        reported=(("Ref-YouTube-VOS valid (server)", 64.3), ("Ref-DAVIS17 valid", 67.3)),
        selection="top1", test_short_side=480),
    Release(
        name="mask2former_clip.coco",
        description="CLIP ConvNeXt-L Mask2Former trained on COCO: the start of the authors' MeViS training "
                    "(model.init_from)",
        source="gdrive:1cjzb9McZpo1fbFmpAv5FLZUSgJfPMlrW", filename="mask2former_clip_coco.pth", kind="init"),
)
