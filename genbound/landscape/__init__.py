"""Loss-landscape slices around a checkpoint, in the adapter subspace by default.

``landscape_1d`` / ``landscape_2d`` evaluate L(theta + x d1 + y d2) on odd grids centred
on the checkpoint along filter-normalised Gaussian, trajectory-PCA or base-to-checkpoint
directions, and report the centre loss, the curvature along each axis, the flat fraction
and the mean ascent at a radius; results save to .npz and plot with matplotlib.
"""

from genbound.landscape.directions import (
    SPACES,
    Directions,
    filter_normalize,
    path_direction,
    pca_directions,
    random_directions,
)
from genbound.landscape.slices import Landscape, evaluate_plane, landscape_1d, landscape_2d

__all__ = [
    "SPACES",
    "Directions",
    "Landscape",
    "evaluate_plane",
    "filter_normalize",
    "landscape_1d",
    "landscape_2d",
    "path_direction",
    "pca_directions",
    "random_directions",
]
