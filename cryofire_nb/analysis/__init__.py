"""Analysis of the latent space z and of the volumes it generates (for the notebooks and
the ``evaluate`` command).

==============================  ==========================================================
step                            functions (module)
==============================  ==========================================================
2-D views of z                  :func:`pca` (:class:`PCAResult`), :func:`umap_embedding`
                                (:class:`UmapResult`) (:mod:`.latent`)
clusters                        :func:`kmeans` (:class:`KMeansResult`: centres in z and
                                the on-data particle nearest each centre), :func:`gmm`
                                (:class:`GMMResult`: Gaussian mixture, soft labels)
density of states               :func:`density_grid` (:class:`DensityGrid`: 2-D histogram
                                or Gaussian KDE on a grid, e.g. of PC1/PC2)
traversals                      :func:`pc_traversal` (percentiles along a PC, mapped back
                                to z), :func:`graph_path` (shortest path between two
                                particles on a kNN graph of z) (:mod:`.traversal`)
volumes                         :func:`volumes_at` (a volume generator such as
                                ``VolumeDecoder.eval_volume`` at many z -> (m, d, d, d))
selections                      :func:`indices_in_polygon`, :func:`write_selection`
                                (index ``.pkl`` or a ``.star`` / ``.cs`` subset),
                                :class:`SelectionSaver` (a lasso callback writing all three),
                                :func:`to_original_indices` (selection on a run trained
                                with ``--ind`` -> rows of the original stack)
                                (:mod:`.selection`)
diagnostics                     :func:`confounder_correlations` (z against defocus, view,
                                shift; :func:`pose_covariates`), :func:`latent_outliers`
                                (junk far from the bulk of z), :func:`write_volume_series`
                                (``.mrc`` series + ChimeraX script), :func:`centre_contrast`
                                (a first screen of picks on the images) (:mod:`.diagnostics`)
==============================  ==========================================================

Every function takes z as an (n, k) array (numpy, torch, or a
:class:`cryofire_nb.io.Latents`, whose means are used), is deterministic for a given
``seed``, and returns a frozen dataclass or a numpy array. Indices are 0-based rows of
the particle stack z was inferred from.

Dimension letters: n particles, k latent dimension, c principal components, K clusters,
m points on a traversal, d box.
"""

from .latent import (DensityGrid, GMMResult, KMeansResult, PCAResult, UmapResult, UmapUnavailableError,
                     as_latents, density_grid, gmm, kmeans, nearest_points, pca, umap_embedding)
from .diagnostics import (Confounders, Outliers, centre_contrast, confounder_correlations, latent_outliers, pose_covariates,
                          write_volume_series)
from .selection import SelectionSaver, indices_in_polygon, to_original_indices, write_selection
from .traversal import GraphPath, Traversal, graph_path, knn_graph, pc_traversal, volumes_at

__all__ = [
    "Confounders", "Outliers", "centre_contrast", "confounder_correlations", "latent_outliers", "pose_covariates", "to_original_indices",
    "write_volume_series",
    "DensityGrid", "GMMResult", "GraphPath", "KMeansResult", "PCAResult", "SelectionSaver", "Traversal",
    "UmapResult",
    "UmapUnavailableError", "as_latents", "density_grid", "gmm", "graph_path", "indices_in_polygon",
    "kmeans", "knn_graph", "nearest_points", "pc_traversal", "pca", "umap_embedding", "volumes_at",
    "write_selection",
]
