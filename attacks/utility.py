"""Utility [utility]: is the synthetic set useful for training what cardiac MRI is used for — segmentation?

TSTR (train on synthetic, test on real; Esteban et al. 2017): a segmenter trained on synthetic (image, mask) pairs
only, scored on the held-out real test patients with ACDC's Dice and HD95 per structure and per vendor. Beside it,
with the same recipe (cmraudit.measure.segmenter): TRTR (trained on the real members, the ceiling a generator aims at) and
real + synthetic (does adding synthetic data help?). When several vendors exist, a leave-one-vendor-out fold trains
without one vendor and tests on it (scanner robustness, as in M&Ms; Campello et al. 2021). When pathology labels
exist, a slice classifier trained on synthetic images is scored per test patient (accuracy, balanced accuracy).

Real-data models (TRTR, its vendor folds) are trained once per run (see cmraudit.measure.segmenter.real_segmenter).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cmraudit.api import AuditContext, Metric, MetricValue, NotApplicable
from cmraudit.data.types import PATHOLOGIES, SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.segmenter import context_config, evaluate, real_segmenter, train_segmenter

from ._shared import table_key


@dataclass(frozen=True)
class UtilityConfig:
    real_plus_synthetic: bool = True
    lovo_folds: int = 1  # leave-one-vendor-out folds: 0 none, -1 every vendor, n the n vendors with most test data
    classify: bool = True
    classifier_steps: int = 150
    classifier_batch: int = 32


PROFILE_CONFIGS = {
    "smoke": UtilityConfig(real_plus_synthetic=False, lovo_folds=0, classifier_steps=20),
    # the default run trains five models on two CPU cores: one segmenter per model (TSTR). Real + synthetic doubles
    # the cost, a pathology classifier trained on 24 phantom patients scores near chance on 12 test patients, and a
    # vendor fold (a second segmenter per model, 18 s of the default run) is tested on the 3 test patients of one
    # vendor, with no CI (its Dice was 0.81-0.88 where TSTR was 0.81-0.85): all three are left to the standard
    # profile (or [options.utility])
    "quick": UtilityConfig(real_plus_synthetic=False, lovo_folds=0, classify=False),
    "standard": UtilityConfig(lovo_folds=-1, classifier_steps=2000),
}


def utility_config(ctx: AuditContext) -> UtilityConfig:
    """The profile's UtilityConfig (``Utility.profile_config``) with the user's ``[options.utility]`` over it."""
    return UtilityConfig(**ctx.settings(Utility))


def _without_vendor(table: SliceTable, vendor: str) -> SliceTable:
    return table.take(np.flatnonzero(table.vendors != vendor))


def _only_vendor(table: SliceTable, vendor: str) -> SliceTable:
    return table.take(np.flatnonzero(table.vendors == vendor))


def lovo_vendors(test: SliceTable, synthetic: SliceTable, folds: int) -> list[str]:
    """Vendors to hold out: present in the test split and in the synthetic set, which keeps another vendor; the
    vendors with the most test patients first (ties alphabetical), so a single fold is the best-measured one."""
    synthetic_vendors = set(synthetic.vendors.tolist())
    if len(synthetic_vendors) < 2 or folds == 0:
        return []
    labels = test.patient_labels()
    counts = {v: sum(1 for vv, _ in labels.values() if vv == v) for v in synthetic_vendors}
    ranked = sorted((v for v in counts if counts[v] > 0), key=lambda v: (-counts[v], v))
    return ranked if folds < 0 else ranked[:folds]


# -------------------------------------------------------------------------------------- pathology classification
def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, seed: int,
                     device: str) -> torch.nn.Module:
    """A small MONAI ``Classifier`` (strided residual CNN) over slices, cross-entropy, Adam; seeded."""
    from monai.networks.nets import Classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Classifier(tuple(images.shape[1:]), len(PATHOLOGIES), channels=(8, 16, 32, 64), strides=(2, 2, 2, 2),
                         num_res_units=1).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, foreach=True)
    net.train()
    for _ in range(steps):
        rows = torch.randint(0, len(images), (min(batch, len(images)),), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(images[rows].to(device)), labels[rows].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def patient_accuracy(net: torch.nn.Module, table: SliceTable) -> dict[str, Any]:
    """Per-patient prediction = argmax of the mean slice log-probabilities; accuracy and balanced accuracy."""
    from scipy.stats import binomtest

    device = next(net.parameters()).device
    logp = torch.cat([torch.log_softmax(net(table.images[i:i + 128].to(device)), 1).cpu()
                      for i in range(0, len(table), 128)])
    truth, guess = [], []
    for rows in table.patient_rows().values():
        truth.append(PATHOLOGIES.index(table.pathologies[rows[0]]) if table.pathologies[rows[0]] in PATHOLOGIES
                     else PATHOLOGIES.index("OTHER"))
        guess.append(int(logp[torch.from_numpy(rows)].mean(0).argmax()))
    # balanced accuracy: the mean recall over the pathologies present among the test patients (as scikit-learn's)
    truth_arr, guess_arr = np.asarray(truth), np.asarray(guess)
    balanced = float(np.mean([np.mean(guess_arr[truth_arr == c] == c) for c in np.unique(truth_arr)]))
    correct = int(np.sum(np.asarray(truth) == np.asarray(guess)))
    ci = binomtest(correct, len(truth)).proportion_ci(0.95, method="exact")  # Clopper-Pearson: few test patients
    return {"accuracy": correct / len(truth), "accuracy_ci": (float(ci.low), float(ci.high)),
            "balanced_accuracy": balanced, "n_patients": len(truth)}


# -------------------------------------------------------------------------------------- the metric
def _dice(name: str, scores: dict[str, Any], **details: Any) -> MetricValue:
    ci = tuple(scores["dice_ci"]) if scores.get("dice_ci") else None
    return MetricValue(float(scores["dice"]["mean"]), "higher", ci,
                       {"description": f"{name}: mean Dice over RV, MYO, LV on real test patients",
                        "by_structure": scores["dice"], "by_vendor": {v: s["dice"] for v, s in
                                                                      scores["by_vendor"].items()},
                        "n_slices": scores["n_slices"], "n_patients": scores.get("n_patients"), **details})


def _hd95(name: str, scores: dict[str, Any], **details: Any) -> MetricValue:
    return MetricValue(float(scores["hd95_mm"]["mean"]), "lower", None,
                       {"description": f"{name}: mean HD95 (mm) over RV, MYO, LV on real test patients",
                        "by_structure": scores["hd95_mm"], "by_vendor": {v: s["hd95_mm"] for v, s in
                                                                         scores["by_vendor"].items()}, **details})


class Utility(Metric):
    name = "utility"
    category = "utility"
    description = ("TSTR segmentation Dice/HD95 per structure and vendor vs TRTR and real + synthetic; "
                   "leave-one-vendor-out; pathology classification TSTR")
    reference = "Esteban 2017 (TSTR); Bernard 2018 (ACDC Dice/HD95); Campello 2021 (M&Ms vendor shift)"

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        """Every UtilityConfig field for ``profile`` (PROFILE_CONFIGS; an unknown profile gets quick's)."""
        return dataclasses.asdict(PROFILE_CONFIGS.get(profile, PROFILE_CONFIGS["quick"]))

    def compute(self, ctx: AuditContext) -> dict[str, MetricValue]:
        config = utility_config(ctx)
        seg_config = context_config(ctx)
        test, syn = ctx.test, ctx.synthetic
        if len(test) == 0:
            raise NotApplicable("the split has no test patients")
        if len(syn) == 0:
            raise NotApplicable("the synthetic set is empty")
        out: dict[str, MetricValue] = {}

        trtr = _real_evaluation(ctx, real_segmenter(ctx, config=seg_config), test)
        tstr = evaluate(train_segmenter(syn.images, syn.masks, seed=ctx.seed, device=ctx.device, config=seg_config),
                        test, seed=ctx.seed)
        ratio = tstr["dice"]["mean"] / trtr["dice"]["mean"] if trtr["dice"]["mean"] else None
        # with generated masks (two-stage generation) the training pairs hold no real data at all
        pairs = ("fully synthetic (generated masks, synthetic images)"
                 if syn.meta.get("mask_source") == "generated" else "real masks, synthetic images")
        out["tstr_dice"] = _dice("TSTR", tstr, trtr=trtr["dice"]["mean"], tstr_over_trtr=ratio,
                                 steps=seg_config.steps, n_train=len(syn), training_pairs=pairs)
        out["tstr_hd95"] = _hd95("TSTR", tstr, trtr=trtr["hd95_mm"]["mean"])
        out["trtr_dice"] = _dice("TRTR (real members)", trtr, n_train=len(ctx.members))
        out["trtr_hd95"] = _hd95("TRTR (real members)", trtr)
        if config.real_plus_synthetic:
            real = ctx.members
            both = SliceTable.concat([real, syn])
            mixed = evaluate(train_segmenter(both.images, both.masks, seed=ctx.seed, device=ctx.device,
                                             config=seg_config), test, seed=ctx.seed)
            out["real_plus_synthetic_dice"] = _dice("real + synthetic", mixed, trtr=trtr["dice"]["mean"],
                                                    n_train=len(both))
            out["real_plus_synthetic_hd95"] = _hd95("real + synthetic", mixed, trtr=trtr["hd95_mm"]["mean"])
        folds = self._lovo(ctx, config, seg_config)
        if folds:
            out["lovo_tstr_dice"] = MetricValue(float(np.mean([f["tstr"] for f in folds.values()])), "higher", None, {
                "description": "leave-one-vendor-out: trained on synthetic images of the other vendors, mean Dice "
                               "on the held-out vendor's real test patients", "folds": folds,
                "trtr": float(np.mean([f["trtr"] for f in folds.values()]))})
        out.update(self._classification(ctx, config))
        return out

    @staticmethod
    def _cached(ctx: AuditContext, key: str, make: Any) -> Any:
        if key not in ctx.cache:
            ctx.cache[key] = make()
        return ctx.cache[key]

    def _lovo(self, ctx: AuditContext, config: UtilityConfig, seg_config: Any) -> dict[str, dict[str, float]]:
        folds: dict[str, dict[str, float]] = {}
        for vendor in lovo_vendors(ctx.test, ctx.synthetic, config.lovo_folds):
            train = _without_vendor(ctx.synthetic, vendor)
            held_out = _only_vendor(ctx.test, vendor)
            if not len(_without_vendor(ctx.members, vendor)):
                continue  # no real patients of another vendor: no TRTR fold to compare with
            trtr = _real_evaluation(ctx, real_segmenter(ctx, exclude_vendor=vendor, config=seg_config), held_out)
            tstr = evaluate(train_segmenter(train.images, train.masks, seed=ctx.seed, device=ctx.device,
                                            config=seg_config), held_out, seed=ctx.seed)
            folds[vendor] = {"tstr": tstr["dice"]["mean"], "trtr": trtr["dice"]["mean"],
                             "tstr_hd95_mm": tstr["hd95_mm"]["mean"], "trtr_hd95_mm": trtr["hd95_mm"]["mean"],
                             "n_test_slices": len(held_out), "n_train_synthetic": len(train)}
        return folds

    def _classification(self, ctx: AuditContext, config: UtilityConfig) -> dict[str, MetricValue]:
        syn, test, members = ctx.synthetic, ctx.test, ctx.members
        if not config.classify or len(set(syn.pathologies.tolist())) < 2 or len(set(test.pathologies.tolist())) < 2:
            return {}

        def fit(table: SliceTable) -> torch.nn.Module:
            return train_classifier(table.images, table.pathology_indices(), config.classifier_steps,
                                    config.classifier_batch, ctx.seed, ctx.device)

        tstr = patient_accuracy(fit(syn), test)
        trtr = self._cached(ctx, f"utility:classify-trtr:{config.classifier_steps}",
                            lambda: patient_accuracy(fit(members), test))
        desc = "pathology classifier trained on synthetic slices, per real test patient (mean slice log-probability)"
        return {"pathology_tstr_accuracy": MetricValue(tstr["accuracy"], "higher", tstr["accuracy_ci"], {
                    "description": desc, "trtr": trtr["accuracy"], "n_patients": tstr["n_patients"]}),
                "pathology_tstr_balanced_accuracy": MetricValue(tstr["balanced_accuracy"], "higher", None, {
                    "description": desc + ", balanced over pathologies", "trtr": trtr["balanced_accuracy"],
                    "chance": 1 / len(set(test.pathologies.tolist()))})}


def _real_evaluation(ctx: AuditContext, segmenter: torch.nn.Module, table: SliceTable) -> dict[str, Any]:
    """``evaluate`` of a real-data segmenter (``real_segmenter``, which sets its ``fingerprint``) on real slices:
    the same for every model of the run, so computed once per run."""
    return ctx.shared_memo(("segmenter-evaluation", segmenter.fingerprint, table_key(table), int(ctx.seed)),
                           lambda: evaluate(segmenter, table, seed=ctx.seed))


@hookimpl
def cmraudit_register_metrics(register) -> None:
    register(Utility)
