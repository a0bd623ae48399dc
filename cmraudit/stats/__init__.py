"""The one implementation of every membership-inference summary: ROC, AUC and TPR at low FPR with patient
bootstrap CIs, an empirical ε lower bound and the membership advantage, at slice and at patient level.

Conventions: higher score = more likely a member; members are the positive class. Every number here can be
recomputed from a saved score file with scikit-learn (``roc_curve(..., drop_intermediate=False)``,
``roc_auc_score``), which the tests check.

References: Carlini et al. 2022, "Membership inference attacks from first principles" (TPR at low FPR, log-scale
ROC); Jagielski et al. 2020 and Nasr et al. 2021 (empirical ε from Clopper–Pearson bounds on FPR and FNR); Yeom et
al. 2018 (membership advantage = max TPR − FPR).
"""
from .bounds import (
                     DEFAULT_DELTA,
                     DEFAULT_GUESS_FRACTIONS,
                     clopper_pearson,
                     eps_lower_bound,
                     one_run_eps_from_counts,
                     one_run_eps_lower_bound,
)
from .patients import DEFAULT_BOOT, aggregate_by_patient, auc_ci, bootstrap_cis, cluster_bootstrap_mean, tpr_ci
from .power import null_auc_sd, ruled_out_auc, units_needed
from .roc import FPR_TARGETS, advantage, auc, log_roc_points, roc_curve, tpr_at_fpr
from .summary import summarize

__all__ = ["DEFAULT_BOOT", "DEFAULT_DELTA", "DEFAULT_GUESS_FRACTIONS", "FPR_TARGETS", "advantage",
           "aggregate_by_patient", "auc", "auc_ci", "bootstrap_cis", "clopper_pearson", "cluster_bootstrap_mean",
           "eps_lower_bound", "log_roc_points", "null_auc_sd", "one_run_eps_from_counts", "one_run_eps_lower_bound",
           "roc_curve", "ruled_out_auc", "summarize", "tpr_at_fpr", "tpr_ci", "units_needed"]
