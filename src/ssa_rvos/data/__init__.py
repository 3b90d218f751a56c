"""Dataset readers (library layer): MeViS, Ref-YouTube-VOS, Ref-DAVIS17 and RefCOCO/+/g.

Every reader lists :class:`Expression` objects in a fixed order and decodes frames and ground truth on
request (:class:`VideoExpressionDataset`); file layouts are in spec Sec. 8 and in each module's
docstring. Mask formats (COCO RLE, palette PNGs) live in :mod:`ssa_rvos.data.masks`. Importing this
package needs only numpy and Pillow; pycocotools is imported when an RLE or polygon is decoded.
"""

from .expressions import DatasetError, Expression, VideoExpressionDataset, clean_expression
from .mevis import MeViS
from .refcoco import RefCOCO
from .ytvos import RefDAVIS17, RefYouTubeVOS

__all__ = [
    "DatasetError",
    "Expression",
    "MeViS",
    "RefCOCO",
    "RefDAVIS17",
    "RefYouTubeVOS",
    "VideoExpressionDataset",
    "clean_expression",
]
