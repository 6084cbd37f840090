"""Starter weights shipped inside the package (safetensors) with their model cards."""
