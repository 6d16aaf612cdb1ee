"""Pipeline stages: orchestration over a model; the math lives in onecomp.algorithms."""
