"""Models: value transforms, the U-Net backbone, training objectives and samplers (plain tensors).

``transform`` (mm/h and K <-> network units), ``backbone`` (:class:`UNet`), ``objectives``
(regression, VP DDPM, flow matching; :func:`make_objective`), ``edm`` (the EDM DDPM), ``cascade``
(the product default), ``residual_flow`` (the previous one), ``samplers`` (Euler, Heun, midpoint,
DDPM ancestral, DDIM).
"""

from qpe_core.models.backbone import UNet
from qpe_core.models.objectives import (
    DDPM,
    OBJECTIVES,
    FlowMatching,
    Objective,
    Regression,
    build_networks,
    make_objective,
    objective_from_config,
)
from qpe_core.models.cascade import CascadeFlow
from qpe_core.models.edm import EDMDiffusion, diffusion_objective
from qpe_core.models.residual_flow import ResidualFlow
from qpe_core.models.samplers import DiffusionSchedule, ddim, ddpm_ancestral, euler, heun, midpoint
from qpe_core.models.transform import BTNormalizer, RainTransform

OBJECTIVES[CascadeFlow.kind] = CascadeFlow  # registered here: cascade, residual_flow, edm build on objectives
OBJECTIVES[ResidualFlow.kind] = ResidualFlow
OBJECTIVES["ddpm"] = diffusion_objective  # EDM preconditioning by default, param="vp" for Ho et al.'s

__all__ = [
    "DDPM", "OBJECTIVES", "CascadeFlow", "EDMDiffusion", "BTNormalizer", "DiffusionSchedule", "FlowMatching", "Objective", "RainTransform",
    "Regression", "ResidualFlow", "UNet", "build_networks", "ddim", "ddpm_ancestral", "euler", "heun",
    "make_objective", "midpoint", "objective_from_config",
]
