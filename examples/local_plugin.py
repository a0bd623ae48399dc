"""A single-file cmraudit plugin, used without installing anything:

    cmraudit -p examples/local_plugin.py plugins
    cmraudit -p examples/local_plugin.py run --generator vae --metric blood-myocardium-contrast --profile smoke
    CMRAUDIT_PLUGINS=examples/local_plugin.py cmraudit run ...          # the same, from the environment

It adds one fidelity metric. In bright-blood (SSFP) cine MRI the blood pool is much brighter than the myocardium;
that contrast is what segmentation networks and readers rely on, and a generator can get the overall intensity
distribution right while washing it out. The metric is |C_synthetic − C_real|, where C is the mean over slices of
(mean LV blood-pool intensity − mean myocardium intensity) on the [-1, 1] scale, and the real slices are those
of the patients whose masks conditioned the synthetic set.
"""
from __future__ import annotations

import numpy as np
import torch

from cmraudit import Metric, MetricValue, NotApplicable, hookimpl

LV, MYO = 3, 2


def blood_myocardium_contrast(images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per-slice mean(LV) − mean(MYO) for the slices that contain both structures."""
    lv, myo = (masks == LV).double(), (masks == MYO).double()
    has_both = (lv.sum((1, 2)) > 0) & (myo.sum((1, 2)) > 0)
    x = images[:, 0].double()
    contrast = (x * lv).sum((1, 2)) / lv.sum((1, 2)).clamp(min=1) - (x * myo).sum((1, 2)) / myo.sum((1, 2)).clamp(min=1)
    return contrast[has_both].numpy()


class BloodMyocardiumContrast(Metric):
    name = "blood-myocardium-contrast"
    category = "fidelity"
    description = "difference in LV blood-pool / myocardium contrast between synthetic and real slices"

    def compute(self, ctx):
        role = ctx.synthetic.meta.get("mask_source", "reference")
        real = ctx.part(role)
        c_syn = blood_myocardium_contrast(ctx.synthetic.images, ctx.synthetic.masks)
        c_real = blood_myocardium_contrast(real.images, real.masks)
        if len(c_syn) == 0 or len(c_real) == 0:
            raise NotApplicable("no slice shows both the LV blood pool and the myocardium")
        return {"contrast_error": MetricValue(abs(float(c_syn.mean()) - float(c_real.mean())), "lower", details={
            "synthetic_contrast": float(c_syn.mean()), "real_contrast": float(c_real.mean()), "real_role": role})}


@hookimpl
def cmraudit_register_metrics(register):
    register(BloodMyocardiumContrast)
