"""Re-export of the dataset registry (:mod:`vla_ebt.data.oxe_configs`), so conversion code and the
training loader share one definition."""

from vla_ebt.data.oxe_configs import (  # noqa: F401
    CAMERA_ROLES,
    GRIPPER_TRANSFORMS,
    DatasetConfig,
    Part,
    apply_gripper,
    get_config,
    known_datasets,
    layout_candidates,
    register_config,
)
