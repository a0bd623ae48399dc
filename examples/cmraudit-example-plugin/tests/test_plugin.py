"""The plugin's classes keep cmraudit's contracts, and the installed package is found through its entry point.

Run with ``pytest tests`` from this folder once the package is installed (``pip install -e .``).
"""
from importlib.metadata import entry_points


from cmraudit import Batch
from cmraudit.registry import registered
from cmraudit.testing import check_attack, check_generator, check_metric
from cmraudit_example_plugin.attack import CalibratedNearestNeighbourAttack
from cmraudit_example_plugin.metric import StructureIntensityError
from cmraudit_example_plugin.section import ExampleSection
from cmraudit_example_plugin.unet import ExampleUNetGenerator


def test_entry_point_registers_every_class():
    assert "example" in {ep.name for ep in entry_points(group="cmraudit")}
    assert registered("generators")["example-unet"] is ExampleUNetGenerator
    assert registered("attacks")["example-attack"] is CalibratedNearestNeighbourAttack
    assert registered("metrics")["example-metric"] is StructureIntensityError
    assert registered("report_sections")["example-section"] is ExampleSection


def test_generator_contract():
    check_generator(ExampleUNetGenerator)


def test_generator_learns_the_structure_intensities(cmraudit_tiny_table):
    """After training, the likelihood of the training slices is higher than at initialisation."""
    gen = check_generator(ExampleUNetGenerator, steps=1, table=cmraudit_tiny_table)
    batch = Batch.from_table(cmraudit_tiny_table)
    before = gen.membership_signal(batch)["neg_nll"].mean()
    gen = check_generator(ExampleUNetGenerator, steps=150, table=cmraudit_tiny_table)
    after = gen.membership_signal(batch)["neg_nll"].mean()
    assert after > before + 0.5


def test_attack_and_metric_contracts():
    gen = check_generator(ExampleUNetGenerator, steps=20)
    assert check_attack(CalibratedNearestNeighbourAttack, generator=gen).level == "patient"
    assert check_metric(StructureIntensityError, generator=gen)["structure_intensity_error"].direction == "lower"


def test_metric_is_zero_for_a_perfect_copy(cmraudit_audit_context):
    ctx = cmraudit_audit_context
    ctx.synthetic.images = ctx.reference.images.clone()  # the synthetic set is the real reference set itself
    value = StructureIntensityError().compute(ctx)["structure_intensity_error"]
    assert value.value == 0.0 and value.ci == (0.0, 0.0)


def test_attack_flags_a_generator_that_replays_members(cmraudit_audit_context):
    """A 'generator' that outputs training images verbatim must be caught: members score above non-members."""
    ctx = cmraudit_audit_context
    ctx.synthetic.images = ctx.members.images.clone()
    result = CalibratedNearestNeighbourAttack().run(ctx)
    assert result.member_scores.min() > result.nonmember_scores.max()


def test_section_renders_the_run_numbers():
    html = ExampleSection().render({"models": {"example-unet": {
        "generator": "example-unet",
        "attacks": {"example-attack": {"status": "ok", "auc": 0.61, "auc_ci": [0.5, 0.7]}},
        "metrics": {"example-metric": {"status": "ok", "values": {
            "structure_intensity_error": {"value": 0.123, "ci": [0.1, 0.15]}}}}}}})
    assert "0.61 [0.5, 0.7]" in html and "0.123 [0.1, 0.15]" in html
