"""A plugin that raises at run time is reported by name; the run records it as failed and everything else completes.

The plugins live in one -p file (the route a user takes for an uninstalled plugin) and are driven through the
public command line; the test reads only the exit code, stderr and results.json.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = textwrap.dedent('''
    from cmraudit import Attack, AttackResult, Batch, Metric, MetricValue, ReportSection, hookimpl
    from cmraudit.testing import TinyGenerator


    class WorkingGenerator(TinyGenerator):
        name = "working-gen"


    class FailingGenerator(TinyGenerator):
        name = "failing-gen"

        def training_step(self, batch, runner):
            raise RuntimeError("deliberately broken training_step")


    class WorkingAttack(Attack):
        """The loss attack (Yeom et al. 2018) through the generator's membership signal."""
        name = "working-attack"

        def run(self, ctx):
            def scores(table):
                return ctx.generator.membership_signal(Batch.from_table(table))["neg_nll"].cpu().numpy()
            return AttackResult(scores(ctx.members), scores(ctx.nonmembers), ctx.members.patients,
                                ctx.nonmembers.patients)


    class FailingAttack(Attack):
        name = "failing-attack"

        def run(self, ctx):
            raise ValueError("deliberately broken attack")


    class WorkingMetric(Metric):
        name = "working-metric"

        def compute(self, ctx):
            gap = float((ctx.synthetic.images.mean() - ctx.reference.images.mean()).abs())
            return {"mean_gap": MetricValue(gap, "lower")}


    class FailingMetric(Metric):
        name = "failing-metric"

        def compute(self, ctx):
            raise KeyError("deliberately broken metric")


    class FailingSection(ReportSection):
        name = "failing-section"
        title = "Failing section"

        def render(self, report):
            raise RuntimeError("deliberately broken section")


    @hookimpl
    def cmraudit_register_report_sections(register):
        register(FailingSection)


    @hookimpl
    def cmraudit_register_generators(register):
        register(WorkingGenerator)
        register(FailingGenerator)


    @hookimpl
    def cmraudit_register_attacks(register):
        register(WorkingAttack)
        register(FailingAttack)


    @hookimpl
    def cmraudit_register_metrics(register):
        register(WorkingMetric)
        register(FailingMetric)
''')

#: a second plugin whose registration hook itself raises: skipped with a warning naming it, the run goes on
RAISING_HOOK = textwrap.dedent('''
    from cmraudit import hookimpl


    @hookimpl
    def cmraudit_register_attacks(register):
        raise RuntimeError("deliberately broken registration")
''')


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    if importlib.util.find_spec("cmraudit.cli.run") is None:
        pytest.skip("`cmraudit run` is not part of this installation (cmraudit.cli.run missing)")
    base = tmp_path_factory.mktemp("plugin-errors")
    plugin = base / "raising_plugins.py"
    plugin.write_text(PLUGIN)
    raising_hook = base / "raising_hook.py"
    raising_hook.write_text(RAISING_HOOK)
    out = base / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMRAUDIT_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cmraudit", "-p", str(plugin), "-p", str(raising_hook),
         "run", "--generator", "failing-gen,working-gen",
         "--attack", "failing-attack,working-attack", "--metric", "failing-metric,working-metric",
         "--profile", "smoke", "--data", "phantom:12", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    return result, out


def test_failing_generator_is_named_and_the_run_exits_with_an_error(failed_run):
    result, out = failed_run
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cmraudit: error:")]
    assert errors and "failing-gen" in errors[-1] and "deliberately broken training_step" in errors[-1]
    assert "working-gen:" not in errors[-1]
    hook = str(out.parent / "raising_hook.py")
    assert f"cmraudit: skipping plugin {hook}: RuntimeError: deliberately broken registration" in result.stderr


def test_results_record_the_failures_and_the_rest_completes(failed_run):
    _, out = failed_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "complete"
    failing, working = doc["models"]["failing-gen"], doc["models"]["working-gen"]
    assert failing["status"] == "failed"
    assert "generator 'failing-gen'" in failing["error"] and "RuntimeError: deliberately broken training_step" \
        in failing["error"]
    assert failing["attacks"] == {} and failing["metrics"] == {}

    assert working["status"] == "ok", working["error"]
    attacks, metrics = working["attacks"], working["metrics"]
    assert attacks["failing-attack"]["status"] == "failed"
    assert "attack 'failing-attack'" in attacks["failing-attack"]["error"]
    assert "ValueError: deliberately broken attack" in attacks["failing-attack"]["error"]
    assert attacks["working-attack"]["status"] == "ok" and 0 <= attacks["working-attack"]["auc"] <= 1
    assert (out / attacks["working-attack"]["scores"]).is_file()
    assert metrics["failing-metric"]["status"] == "failed"
    assert "metric 'failing-metric'" in metrics["failing-metric"]["error"]
    assert metrics["working-metric"]["status"] == "ok"
    report = (out / "report.html").read_text()
    assert "Failing section" in report
    assert "This section could not be rendered: RuntimeError: deliberately broken section" in report


def test_gate_fails_closed_on_the_failures(failed_run):
    from cmraudit import results
    from cmraudit.gate import evaluate, load_policy, passed

    _, out = failed_run
    rules = evaluate(results.load(out), load_policy(None))
    assert not passed(rules)
    failing = [r for r in rules if not r.passed]
    text = json.dumps([r.__dict__ for r in failing], default=str)
    assert "failing-gen" in text and "failing-attack" in text
