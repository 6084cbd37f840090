"""The split of radfm.adapters: old import paths still work, no submodule hides an export, one SHA check."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import radfm.adapters
from radfm.adapters import lora
from radfm.adapters.base_encoder import check_base_encoder
from radfm.errors import ConfigError

ADAPTERS = Path(radfm.adapters.__file__).parent
#: Every public name radfm.adapters.lora had before the split (importers rely on them).
LORA_NAMES = ["ADAPTER_CONFIG", "ADAPTER_META_FILENAME", "ADAPTER_WEIGHTS", "DEFAULT_TARGETS", "PYRAMID_TARGETS",
              "HeadedTaskModel", "LoraSpec", "adapter_meta", "add_adapter", "attach_encoder_lora", "attach_lora",
              "cnn_lora_targets", "encoder_sha256", "inject_encoder_lora", "load_adapters", "load_encoder_adapter",
              "merge", "merge_injected_lora", "read_adapter_meta", "resolve_spec", "save_adapter",
              "save_encoder_adapter", "trainable_parameters", "use_adapter", "adapter_record", "write_adapter_record"]


def test_lora_keeps_every_name() -> None:
    missing = [n for n in LORA_NAMES if not hasattr(lora, n)]
    assert not missing


def test_package_exports_are_the_lora_objects_even_after_every_submodule_loads() -> None:
    """A submodule named like an export (``merge``) would replace it on the package once imported."""
    for path in ADAPTERS.glob("*.py"):
        if path.stem != "__init__":
            importlib.import_module(f"radfm.adapters.{path.stem}")
    for name in radfm.adapters.__all__:
        assert getattr(radfm.adapters, name) is getattr(lora, name), name


def test_no_adapters_module_is_over_500_lines() -> None:
    long = {p.name: n for p in ADAPTERS.glob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long


def test_check_base_encoder_refuses_another_encoder_naming_file_and_both_hashes(tmp_path) -> None:
    meta_file = tmp_path / "radfm_adapter.json"
    record = {"base_encoder": {"path": "/enc", "sha256": "a" * 64}}
    with pytest.raises(ConfigError, match="was trained on encoder") as info:
        check_base_encoder(record, "b" * 64, meta_file, name="liver")
    text = str(info.value)
    assert str(meta_file) in text and "a" * 12 in text and "b" * 12 in text
    assert "'liver'" in text and "/enc" in text


def test_check_base_encoder_accepts_the_same_encoder_or_no_record(tmp_path) -> None:
    meta_file = tmp_path / "radfm_adapter.json"
    check_base_encoder({"base_encoder": {"sha256": "a" * 64}}, "a" * 64, meta_file)
    check_base_encoder({"base_encoder": {"sha256": None}}, "b" * 64, meta_file)
    check_base_encoder({"base_encoder": None}, "b" * 64, meta_file)
    check_base_encoder({}, "b" * 64, meta_file)
