"""A model's input recipe (the plan) and the one function that applies it and maps back."""

from radfm.preprocess.geometry import PreparedGeometry
from radfm.preprocess.plan import PLAN_FILENAME, PreparedInput, PreprocessPlan, apply_plan, restore_to_input

__all__ = ["PLAN_FILENAME", "PreparedGeometry", "PreparedInput", "PreprocessPlan", "apply_plan", "restore_to_input"]
