"""``unetpipe.weights``, the import path of the separation weight map that the
design pins. The functions live in :mod:`unetpipe.stages.weights`."""

from .stages.weights import (  # noqa: F401
    MODES,
    TOLERANCE,
    SeparationTargets,
    border_term,
    class_weights,
    influence_radius,
    nearest_two,
    separation_targets,
    separation_weight_map,
    targets_for_mode,
    weights_from_counts,
)
