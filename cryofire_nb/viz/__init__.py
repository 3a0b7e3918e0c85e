"""Figures for the notebooks and the ``evaluate`` command.

Every function returns a figure and shows nothing: a matplotlib ``Figure`` (static,
renders headless and in committed notebooks) or, for the interactive extras, a plotly
``go.Figure`` / ``go.FigureWidget``. In a notebook, end the cell with the figure (or
``display(fig)``) to show it; save with :func:`save_figure`. The library never calls
``plt.show()``; without a display matplotlib draws with Agg.

=========================  ===================================================  ==========
what                       functions                                            module
=========================  ===================================================  ==========
images                     :func:`image_grid`                                   images
CTF                        :func:`ctf_profiles` (1-D, several defoci),          images
                           :func:`ctf_image` (2-D), :func:`ctf_2d` (array)
volumes                    :func:`volume_slices`, :func:`volume_projections`,   volumes
                           :func:`volume_series`, :func:`volume_surfaces`
                           (shaded isosurface pictures, static),
                           :func:`volume_isosurface` (plotly)
latent space               :func:`latent_scatter`, :func:`density_plot`,        latent
                           :func:`pc1_histogram` (per class, thresholds),
                           :func:`make_selectable_scatter` (plotly widget),
                           :func:`scree_plot`, :func:`confounder_plot`,
                           :func:`outlier_histogram`
poses                      :func:`view_distribution` (Mollweide),               poses
                           :func:`angular_error_histograms`,
                           :func:`view_error_map` (error per view direction),
                           :func:`binned_errors_plot` (error vs defocus, ...)
curves                     :func:`fsc_curves`, :func:`training_curves`,         curves
                           :func:`metric_curves` (metric vs images seen, ...)
=========================  ===================================================  ==========

Conventions: images ``[y, x]`` and volumes ``[z, y, x]`` (centre at index d // 2) are
drawn with row 0 at the top; a rotation's view direction is its third row ``R[2]``.
"""

from ._figure import new_figure, save_figure
from .curves import fsc_curves, metric_curves, training_curves
from .images import ctf_2d, ctf_image, ctf_profiles, image_grid
from .latent import (confounder_plot, density_plot, latent_scatter, make_selectable_scatter, outlier_histogram,
                     pc1_histogram, scree_plot, selection_handler)
from .poses import (ViewHistogram, angular_error_histograms, binned_errors_plot, view_directions,
                    view_distribution, view_error_map, view_histogram)
from .volumes import (isosurface_image, volume_isosurface, volume_projections, volume_series, volume_slices,
                      volume_surfaces)

__all__ = [
    "confounder_plot", "outlier_histogram", "scree_plot",
    "ViewHistogram", "angular_error_histograms", "binned_errors_plot", "ctf_2d", "ctf_image", "ctf_profiles",
    "density_plot", "fsc_curves", "image_grid", "isosurface_image", "latent_scatter", "make_selectable_scatter",
    "metric_curves", "new_figure", "pc1_histogram", "save_figure", "selection_handler", "training_curves",
    "view_directions", "view_distribution", "view_error_map", "view_histogram", "volume_isosurface",
    "volume_projections", "volume_series", "volume_slices", "volume_surfaces",
]
