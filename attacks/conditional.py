"""Conditional fidelity [conditional]: does a synthetic image show the vendor and pathology it was asked for?

Classification Accuracy Score in its label-fidelity direction (Ravuri & Vinyals 2019, "Classification Accuracy
Score for Conditional Generative Models"): one classifier per label (vendor, pathology) is trained on the REAL
member slices and scored (a) on real held-out test slices — the ceiling — and (b) on the model's synthetic images
against the labels they were conditioned on. A model that ignores its vendor label scores about chance on vendor
however good its images look; mask Dice cannot see that.

The classifiers (``cmraudit.measure.classifier``) are linear probes on hand-made features, not CNNs, for cost and
because they work at every profile's image size. Real test accuracy per slice, phantom:60, seed 0 (24 member
patients train the probes, 12 test patients score them; chance 0.25 for 4 vendors, 0.2 for 5 pathologies):

=====================  ======  ======
probe                  32 px   64 px
=====================  ======  ======
vendor                 0.83    0.93
pathology              0.78    0.88
=====================  ======  ======

On the 12 reference patients (the default conditioning slices) the vendor probe scores 0.62 and 0.72: with three
patients per vendor in a split, expect ±0.15 between splits; the patient-bootstrap CIs say as much.

Cost on two shared CPU cores at 64 px (quick profile, phantom:60): ~4 s for the first model (features and
segmentations of the members, test and conditioning slices; the members' segmenter itself is shared with fidelity
and utility), then ~1 s per model (one segmenter pass and the features of its synthetic set).

An earlier small CNN on raw slices reached 0.73 (vendor) at 64 px in ~35 s and fell to chance at 32 px. Measured
here: at 5 mm pixels the vendors' resolution, ringing and spectrum differences are gone (a probe on radial
power-spectrum bands alone scores 0.30, chance 0.25, at 32 px), and what is left — grey-level mapping, contrast
and noise per structure — is a per-structure statistic, which a CNN would first have to learn to localise from
24 patients (the likely reason it failed). The vendor probe is given those statistics directly: per-structure
intensity quantiles (0.82 alone at 32 px) and local-residual quantiles. Pathology in ACDC is anatomy; its probe
reads sizes, wall thickness and area ratios of the members' segmenter output on the image (intensity features
added to it overfit: 0.62).

What the pathology score means for a mask-conditioned generator: the anatomy comes with the conditioning mask,
so a model that follows its mask shows the right pathology whatever it does with the pathology label; the score
falls when the images do not show the mask's anatomy. The vendor score is the label-fidelity check proper.

A probe whose real-test balanced accuracy has a 95% CI (patient bootstrap) that reaches chance cannot tell the
classes apart on this data: its values are then marked ``informative: false`` and say so, instead of judging the
models.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cmraudit.api import AuditContext, Metric, MetricValue, NotApplicable
from cmraudit.data.types import SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.classifier import (
    LinearProbe,
    cached,
    digest,
    label_scores,
    separates,
    shape_features,
    style_features,
)
from cmraudit.measure.segmenter import context_config, fingerprint, predict, real_segmenter


@dataclass(frozen=True)
class ConditionalConfig:
    vendor: bool = True
    pathology: bool = True
    l2: float = 0.02  # ridge penalty on standardised features: best of 0.002-0.2 on phantom:60 at 32 and 64 px
    n_boot: int = 200  # patient-bootstrap resamples for the CIs
    max_slices: int = 4000  # larger synthetic / real sets are subsampled (seeded)


PROFILE_CONFIGS = {
    "smoke": ConditionalConfig(n_boot=50),
    "quick": ConditionalConfig(),
    "standard": ConditionalConfig(n_boot=1000, max_slices=20000),
}

#: label -> (SliceTable column, what its probe reads)
LABELS = {
    "vendor": ("vendors", "intensity and local-residual quantiles per structure (conditioning mask)"),
    "pathology": ("pathologies", "RV / MYO / LV sizes, wall thickness and area ratios of the members' segmenter "
                                 "output on the image, and the phase"),
}
FEATURES_VERSION = 2  # bump when a feature definition changes: cached probes are then retrained


def conditional_config(ctx: AuditContext) -> ConditionalConfig:
    """The profile's ConditionalConfig with the user's ``[options.conditional]`` over it."""
    return ConditionalConfig(**ctx.settings(Conditional))


def features(label: str, table: SliceTable, segmenter: torch.nn.Module | None) -> torch.Tensor:
    """The probe input of every slice of ``table`` for one label."""
    if label == "vendor":
        return style_features(table.images, table.masks)
    return shape_features(predict(segmenter, table.images, batch_size=128), table.phases)


def _subsample(table: SliceTable, limit: int, seed: int) -> SliceTable:
    if len(table) <= limit:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(len(table), limit, replace=False)))


def _held_out(ctx: AuditContext) -> tuple[str, SliceTable]:
    for role in ("test", "nonmembers", "reference"):
        if getattr(ctx.split, role):
            return role, ctx.part(role)
    raise NotApplicable("no held-out real patients to measure the classifiers' real accuracy on")


def _conditioning(ctx: AuditContext) -> SliceTable | None:
    """The real slices the synthetic set was conditioned on, row for row, when all are in the data and none is a
    member's (the probes were trained on the members)."""
    index = {key: i for i, key in enumerate(zip(ctx.data.patients.tolist(), ctx.data.phases.tolist(),
                                                ctx.data.slice_index.tolist()))}
    syn = ctx.synthetic
    rows = [index.get(key) for key in zip(syn.patients.tolist(), syn.phases.tolist(), syn.slice_index.tolist())]
    if not rows or any(r is None for r in rows) or set(syn.patients.tolist()) & set(ctx.split.members):
        return None
    return ctx.data.take(rows)


class Conditional(Metric):
    name = "conditional"
    category = "fidelity"
    description = ("conditional fidelity: vendor and pathology classifiers trained on real members, accuracy on the "
                   "synthetic images' conditioning labels beside their accuracy on real test slices")
    reference = "Ravuri & Vinyals 2019 (Classification Accuracy Score)"

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return dataclasses.asdict(PROFILE_CONFIGS.get(profile, PROFILE_CONFIGS["quick"]))

    def compute(self, ctx: AuditContext) -> dict[str, MetricValue]:
        config = conditional_config(ctx)
        members = ctx.members
        labels = [name for name in LABELS if getattr(config, name)
                  and len(set(getattr(members, LABELS[name][0]).tolist())) >= 2]
        if not labels:
            raise NotApplicable("the member patients hold fewer than two vendors and two pathologies")
        if len(ctx.synthetic) == 0:
            raise NotApplicable("empty synthetic set")
        role, test = _held_out(ctx)
        test = _subsample(test, config.max_slices, ctx.seed)
        seg_config = context_config(ctx)
        segmenter = real_segmenter(ctx, "members", config=seg_config) if "pathology" in labels else None
        key = fingerprint(members, ctx.seed, config, labels=labels, test=sorted(test.patient_ids), role=role,
                          segmenter=dataclasses.asdict(seg_config), version=FEATURES_VERSION)

        def train() -> dict[str, Any]:
            out = {}
            for name in labels:
                column = LABELS[name][0]
                probe = LinearProbe.fit(features(name, members, segmenter), getattr(members, column), config.l2)
                guess = probe.predict(features(name, test, segmenter))
                out[name] = {"probe": probe.state(), "real_test": label_scores(
                    getattr(test, column), guess, test.patients, probe.classes, config.n_boot, ctx.seed)}
            return out

        trained = cached(ctx, "conditional-probes", key, train)
        probes = {name: LinearProbe.from_state(trained[name]["probe"]) for name in labels}
        counterpart = _conditioning(ctx)
        real_cond: dict[str, Any] = {}
        if counterpart is not None:
            counterpart = _subsample(counterpart, config.max_slices, ctx.seed)
            real_cond = cached(ctx, "conditional-real", digest(key, sorted(counterpart.patient_ids), len(counterpart)),
                               lambda: self._score(probes, counterpart, segmenter, config, ctx.seed))
        fake = _subsample(ctx.synthetic, config.max_slices, ctx.seed)
        synthetic = self._score(probes, fake, segmenter, config, ctx.seed)

        values: dict[str, MetricValue] = {}
        for name in labels:
            real, syn = trained[name]["real_test"], synthetic[name]
            informative = separates(real)
            note = (f"the {name} classifier tells the classes apart on real {role} slices" if informative else
                    f"the {name} classifier cannot tell the classes apart on real {role} slices (balanced accuracy "
                    f"CI {real['balanced_accuracy_ci']} reaches chance {real['chance']:.3g}): this value does not "
                    f"judge the model")
            common = {"label": name, "informative": informative, "note": note, "classifier": "logistic regression",
                      "features": LABELS[name][1], "chance": syn["chance"], "per_class": syn["per_class"],
                      "n_synthetic": syn["n_slices"], "n_conditioning_patients": syn["n_patients"],
                      "real_role": role, "real_test": real, "real_conditioning": real_cond.get(name)}
            for stat, what in (("accuracy", "slice accuracy"), ("balanced_accuracy", "mean recall per class")):
                values[f"{name}_{stat}"] = MetricValue(
                    syn[stat], "higher", syn[f"{stat}_ci"],
                    {"description": f"{name} {what} of a real-trained classifier on the synthetic images against "
                                    f"their conditioning labels (real {role} slices: {real[stat]:.3g})",
                     "real": real[stat], "real_ci": real[f"{stat}_ci"], "majority_share": syn["majority_share"],
                     **common})
        return values

    @staticmethod
    def _score(probes: dict[str, LinearProbe], table: SliceTable, segmenter: torch.nn.Module | None,
               config: ConditionalConfig, seed: int) -> dict[str, Any]:
        return {name: label_scores(getattr(table, LABELS[name][0]), probe.predict(features(name, table, segmenter)),
                                   table.patients, probe.classes, config.n_boot, seed)
                for name, probe in probes.items()}


@hookimpl
def cmraudit_register_metrics(register) -> None:
    register(Conditional)
