"""Finding and loading a segmentation model folder (the shipped one by default) and its calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radfm.adapters.lora import load_encoder_adapter
from radfm.errors import ConfigError
from radfm.tasks.segmentation.model import RadFMPromptSegmenter

__all__ = ["ADAPTER_SUBDIR", "CALIBRATION_FILENAME", "WEIGHTS_DIR", "default_model_dir", "load_calibration",
           "load_segmenter"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ADAPTER_SUBDIR = "adapter"
CALIBRATION_FILENAME = "calibration.json"


def default_model_dir() -> Path:
    """The model shipped inside the package (``radfm/tasks/segmentation/weights``)."""
    return WEIGHTS_DIR


def load_segmenter(model_dir: str | Path | None = None, *, adapter: str | Path | None = None,
                   ) -> RadFMPromptSegmenter:
    """Load a saved segmenter (default: the shipped one), with its LoRA adapter when it has one.

    ``adapter`` overrides the adapter folder (default ``MODEL_DIR/adapter`` if present). Raises
    ConfigError naming the missing file when the folder is not a radfm segmentation model.
    """
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a radfm segmentation model (no config.json).",
                          "Pass --model DIR pointing to a folder written by save_pretrained, or leave it out "
                          "to use the model shipped with radfm.")
    model = RadFMPromptSegmenter.from_pretrained(path)
    adapter_dir = Path(adapter) if adapter is not None else path / ADAPTER_SUBDIR
    if adapter is not None and not adapter_dir.is_dir():
        raise ConfigError(f"adapter folder {adapter_dir} does not exist.", "Pass the folder written by save_adapter.")
    if adapter_dir.is_dir():
        model = load_encoder_adapter(model, adapter_dir)
    if model.preprocess_plan is None:
        raise ConfigError(f"{path} has no preprocess_plan.json.", "Re-save the model with its plan.")
    return model.eval()



def load_calibration(model: RadFMPromptSegmenter) -> Any:
    path = getattr(model, "name_or_path", "") or ""
    if not path:
        return None
    file = Path(path) / CALIBRATION_FILENAME
    if not file.is_file():
        return None
    from radfm.tasks.segmentation.calibration import Calibration

    return Calibration.load(file)
