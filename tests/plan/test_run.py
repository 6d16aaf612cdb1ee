"""The candidates a budget plans with are the formats the method's own uniform
jobs would use (LoRDS: its NormalFloat codebook by default, not the integer one)."""

from __future__ import annotations

import pytest

from onecomp.methods import METHODS
from onecomp.plan.run import candidate_specs
from onecomp.plan.settings import PlanSettings


@pytest.mark.parametrize("codebook", ["nf", "int"])
def test_lords_plans_with_the_codebook_its_options_choose(codebook: str) -> None:
    lords = METHODS["lords"]
    options = lords.options.model_validate({} if codebook == "nf" else {"codebook": codebook})
    specs = candidate_specs(PlanSettings(bpw=3), lords, options)
    assert specs and {s.codebook for s in specs.values()} == {codebook}
    assert lords.format_for(3, 128, False, options).codebook == codebook  # what a uniform lords job stores


def test_the_default_codebook_of_lords_is_normalfloat() -> None:
    lords = METHODS["lords"]
    assert set(candidate_specs(PlanSettings(bpw=3), lords, lords.options())) == {f"lords{b}g{g}nf" for b in (2, 3, 4) for g in (64, 128)}


def test_gptq_plans_its_integer_formats_and_the_extra_lords_ones() -> None:
    gptq = METHODS["gptq"]
    labels = list(candidate_specs(PlanSettings(bpw=3), gptq, gptq.options()))
    assert "w3g128" in labels and labels[-3:] == ["lords2g128nf", "lords3g128nf", "lords4g128nf"]


def test_configured_candidates_are_kept_as_given() -> None:
    lords = METHODS["lords"]
    assert list(candidate_specs(PlanSettings(bpw=3, candidates=["lords3g128"]), lords, lords.options())) == ["lords3g128"]
