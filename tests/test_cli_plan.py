"""`cmraudit plan`: the numbers are cmraudit.stats's, bad input is one stderr line with exit code 2."""
from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

from cmraudit import stats

pytest.importorskip("cmraudit.data.phantom")




def test_plan_json_numbers_are_the_stats_functions(capsys):
    code, out, err = run_cli(["plan", "--data", "phantom:20", "--canaries", "100", "--json"], capsys)
    assert code == 0 and err == []
    plan = json.loads(out)
    roles = plan["roles"]
    assert plan["patients"] == 20 == sum(roles.values())
    assert set(roles) == {"members", "nonmembers", "reference", "test"}
    n1, n2 = roles["members"], roles["nonmembers"]
    assert n1 >= 1 and n2 >= 1
    pa = plan["patient_audit"]
    assert (pa["members"], pa["nonmembers"]) == (n1, n2)
    assert pa["null_auc_sd"] == stats.null_auc_sd(n1, n2)
    assert pa["ruled_out_auc"] == stats.ruled_out_auc(n1, n2)
    assert pa["rules_out_max_auc"] is False  # 20 patients cannot rule out AUC 0.6
    ca = plan["canary_audit"]
    assert (ca["canaries"], ca["members"], ca["nonmembers"]) == (100, 50, 50)
    assert ca["null_auc_sd"] == stats.null_auc_sd(50, 50) and ca["ruled_out_auc"] == stats.ruled_out_auc(50, 50)
    assert ca["perfect_attack_eps"] == stats.one_run_eps_from_counts(100, 100, 0.05)
    assert ca["perfect_attack_eps"] == pytest.approx(3.49, abs=0.01)  # the AUDIT-STATISTICS table
    need = plan["patients_needed"]
    assert (need["members"], need["nonmembers"]) == stats.units_needed(0.6, 0.5)
    assert need["patients"] * 0.4 >= need["members"] and need["patients"] * 0.2 >= need["nonmembers"]
    assert (plan["canaries_needed"]["in"], plan["canaries_needed"]["out"]) == stats.units_needed(0.6, 1.0)


def test_plan_max_auc_and_no_canaries(capsys):
    code, out, _ = run_cli(["plan", "--data", "phantom:20", "--max-auc", "0.9", "--json"], capsys)
    assert code == 0
    plan = json.loads(out)
    assert plan["canary_audit"] is None and plan["max_auc"] == 0.9
    assert (plan["canaries_needed"]["in"], plan["canaries_needed"]["out"]) == stats.units_needed(0.9, 1.0)


def test_plan_text(capsys):
    code, out, err = run_cli(["plan", "--data", "phantom:20", "--canaries", "100"], capsys)
    assert code == 0 and err == []
    assert "20 patients" in out and "8 members × 4 non-members" in out and "3.49" in out and "canaries" in out


@pytest.mark.parametrize("argv", [["plan", "--data", "nosuch:1"], ["plan", "--data", "phantom:abc"],
                                  ["plan", "--data", "phantom:20", "--max-auc", "0.5"]])
def test_plan_bad_input_is_one_line_exit_2(argv, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and len(err) == 1 and err[0].startswith("cmraudit: error: ")
