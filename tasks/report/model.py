"""Report model folders: what is saved, how it is loaded, and the small from-scratch LLM.

Why a folder convention: a report model is more than weights — the tokenizer (with the volume
placeholder), the prompt format version, the preprocessing plan of the volume side and, for
serving, a language-model folder that vLLM or transformers can load on its own. Two kinds:

``kind = "vlm"`` (image → report)::

    DIR/config.json, model.safetensors     RadFMForReportGeneration (encoder + bridge + LLM), HF format
    DIR/tokenizer.json, tokenizer_config.json
    DIR/preprocess_plan.json               how a volume becomes model input
    DIR/radfm_report.json                  kind, prompt version, num_volume_tokens, notes
    DIR/llm/                               the LLM alone (+ tokenizer): what a serving backend loads

``kind = "text"`` (findings → report, the text drafter)::

    DIR/config.json, model.safetensors     a plain causal LM (e.g. LlamaForCausalLM)
    DIR/tokenizer.json, tokenizer_config.json, generation_config.json
    DIR/radfm_report.json

A text drafter folder *is* an LLM folder, so a backend serves it directly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import radfm  # noqa: F401  (torchvision shim before transformers)
from radfm.errors import ConfigError, InputError
from radfm.models.radfm_config import RadFMBridgeConfig
from radfm.models.vlm import RadFMForReportGeneration
from radfm.preprocess.plan import PLAN_FILENAME, PreprocessPlan
from radfm.tasks.report.prompting import PROMPT_VERSION
from radfm.tasks.report.tokenizer import VOLUME_TOKEN
from radfm.weights import quiet_hub_progress, require_model_files

__all__ = [
    "META_FILENAME",
    "ReportModel",
    "TinyLMConfig",
    "build_tiny_llm",
    "default_model_dir",
    "load_report_model",
    "save_report_model",
]

log = logging.getLogger(__name__)
META_FILENAME = "radfm_report.json"
STARTER_REF = "radfm.starter"
LLM_SUBDIR = "llm"
ENCODER_LORA_SUBDIR = "encoder_lora"


def _save_composite(model: Any, out: Path, state: dict[str, torch.Tensor]) -> None:
    """``save_pretrained`` with a reduced state dict; a peft-wrapped encoder is unwrapped meanwhile."""
    enc = model.encoder
    if hasattr(enc, "peft_config"):
        model.encoder = enc.get_base_model()  # config/structure only; its weights are not written
    try:
        model.save_pretrained(out, state_dict=state)
    finally:
        model.encoder = enc


@dataclass
class TinyLMConfig:
    """Size of a from-scratch decoder-only LM (Llama architecture).

    Why these defaults: 4 layers x 256 wide (4.4 M parameters with a 3k vocabulary) train on
    the 3,351 IU X-ray reports in minutes on two CPU cores, and ``head_dim`` = 64 >= 32 keeps
    the model servable by vLLM's CPU attention.
    """

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02


def build_tiny_llm(tokenizer: Any, cfg: TinyLMConfig | None = None, *, seed: int = 0) -> Any:
    """A fresh ``LlamaForCausalLM`` sized for ``tokenizer`` (vocab, bos/eos/pad ids set)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyLMConfig()
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"hidden_size {cfg.hidden_size} must be divisible by num_heads {cfg.num_heads}.")
    if cfg.hidden_size // cfg.num_heads < 32:
        log.warning("head_dim %d < 32: vLLM's CPU backend will refuse this model",
                    cfg.hidden_size // cfg.num_heads)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return model


@dataclass
class ReportModel:
    """A loaded report model: the network, its tokenizer and what its folder says about it.

    Attributes:
        kind: "vlm" (``model`` is a :class:`RadFMForReportGeneration`) or "text" (a causal LM).
        model: the network, in eval mode.
        tokenizer: its tokenizer (volume placeholder and section tokens included).
        plan: preprocessing plan of the volume side ("vlm" only).
        meta: the folder's ``radfm_report.json``.
        path: where it was loaded from (``None`` when built in memory).
    """

    kind: Literal["vlm", "text"]
    model: Any
    tokenizer: Any
    plan: PreprocessPlan | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_volume_tokens(self) -> int:
        return int(self.model.config.num_volume_tokens) if self.kind == "vlm" else 0

    @property
    def language_model(self) -> Any:
        return self.model.language_model if self.kind == "vlm" else self.model

    @property
    def llm_dir(self) -> Path | None:
        """Folder a serving backend loads for this model (the LLM alone)."""
        if self.path is None:
            return None
        return self.path / LLM_SUBDIR if self.kind == "vlm" else self.path


def default_model_dir() -> Path:
    """The starter image→report model shipped with radfm (SIMULATED training data)."""
    return Path(__file__).resolve().parent / "weights"


def _starter_sha256() -> str:
    import hashlib

    from radfm.starter import starter_encoder_path

    return hashlib.sha256((starter_encoder_path() / "model.safetensors").read_bytes()).hexdigest()


def save_report_model(rm: ReportModel, out_dir: str | Path, *, encoder_ref: str | None = None,
                      notes: dict[str, Any] | None = None) -> Path:
    """Write ``rm`` as a report model folder (see :func:`_save`)."""
    with quiet_hub_progress():
        return _save(rm, out_dir, encoder_ref=encoder_ref, notes=notes)


def _save(rm: ReportModel, out_dir: str | Path, *, encoder_ref: str | None = None,
          notes: dict[str, Any] | None = None) -> Path:
    """Write ``rm`` as a report model folder (layout in the module docstring); returns the folder.

    ``encoder_ref="radfm.starter"`` leaves the (frozen, unchanged) starter encoder's weights out
    of ``model.safetensors`` and records its SHA-256 instead: the shipped model stays small and
    is refused if the installed starter encoder is not the one it was trained on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = rm.model
    if hasattr(model, "language_model") and hasattr(model.language_model, "merge_and_unload"):
        raise ConfigError("the model still carries unmerged LoRA adapters.",
                          "Merge them first (radfm.tasks.report.train.merge_lora) or save the adapter apart.")
    extra: dict[str, Any] = {}
    if encoder_ref is not None:
        if encoder_ref != STARTER_REF or rm.kind != "vlm":
            raise ConfigError(f"unknown encoder reference {encoder_ref!r}.", f"Only {STARTER_REF!r} is supported.")
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        extra["encoder"] = {"source": STARTER_REF, "sha256": _starter_sha256()}
        if hasattr(model.encoder, "peft_config"):  # the task's LoRA on the shared encoder, saved apart
            from radfm.adapters import save_encoder_adapter

            save_encoder_adapter(model.encoder, out / ENCODER_LORA_SUBDIR, task="report", base_encoder=STARTER_REF)
            extra["encoder"]["lora"] = ENCODER_LORA_SUBDIR
        _save_composite(model, out, state)
    else:
        if rm.kind == "vlm" and hasattr(model.encoder, "peft_config"):
            model.encoder = model.encoder.merge_and_unload()  # a self-contained folder: merge it
        model.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    meta = {
        **rm.meta,
        **extra,
        "format": "radfm-report",
        "kind": rm.kind,
        "prompt_version": PROMPT_VERSION,
        "volume_token": VOLUME_TOKEN,
        "num_volume_tokens": rm.num_volume_tokens,
        **({"notes": notes} if notes else {}),
    }
    if rm.kind == "vlm":
        if rm.plan is None:
            raise ConfigError("a vlm report model needs its preprocessing plan.")
        rm.plan.save(out)
        llm = out / LLM_SUBDIR
        model.language_model.save_pretrained(llm)
        rm.tokenizer.save_pretrained(llm)
        meta["llm_dir"] = LLM_SUBDIR
    else:
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(out)
    (out / META_FILENAME).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_report_model(path: str | Path | None = None, *, dtype: torch.dtype | None = None) -> ReportModel:
    """Load a report model folder (default: the shipped starter model), in eval mode."""
    with quiet_hub_progress():
        return _load(path, dtype=dtype)


def _load(path: str | Path | None = None, *, dtype: torch.dtype | None = None) -> ReportModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path) if path is not None else default_model_dir()
    meta_path = p / META_FILENAME
    if not meta_path.is_file():
        hint = ("The shipped starter model is missing from this installation; train one with "
                "`radfm train report --phantoms N --out DIR`." if path is None else
                "Point --model at a folder written by `radfm train report` (it holds radfm_report.json).")
        raise InputError(f"{p} is not a radfm report model (no {META_FILENAME}).", hint)
    meta = json.loads(meta_path.read_text())
    if int(meta.get("prompt_version", -1)) != PROMPT_VERSION:
        raise ConfigError(f"{p} was trained with prompt format {meta.get('prompt_version')}, this radfm "
                          f"builds format {PROMPT_VERSION}.", "Retrain the model with this radfm version.")
    require_model_files(p, "report model", written_by="radfm train report")  # not a safe_open traceback
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    tokenizer.padding_side = "left"
    kind = meta.get("kind")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if kind == "vlm":
        if isinstance(meta.get("encoder"), dict) and meta["encoder"].get("source") == STARTER_REF:
            model = _load_with_starter_encoder(p, meta["encoder"], dtype)
        else:
            model = RadFMForReportGeneration.from_pretrained(str(p), use_safetensors=True, **kwargs).eval()
        plan = PreprocessPlan.load(p) if (p / PLAN_FILENAME).is_file() else None
        return ReportModel("vlm", model, tokenizer, plan, meta, p)
    if kind == "text":
        model = AutoModelForCausalLM.from_pretrained(str(p), use_safetensors=True, **kwargs).eval()
        return ReportModel("text", model, tokenizer, None, meta, p)
    raise ConfigError(f"{meta_path} has unknown kind {kind!r}.", "Expected 'vlm' or 'text'.")


def _load_with_starter_encoder(p: Path, enc_meta: dict[str, Any], dtype: torch.dtype | None
                               ) -> RadFMForReportGeneration:
    """Composite model whose encoder is the installed starter encoder (+ this model's LoRA on it, merged)."""
    from safetensors.torch import load_file

    from radfm.models.radfm_config import RadFMConfig
    from radfm.starter import load_starter_encoder

    sha256 = enc_meta.get("sha256")
    if sha256 is not None and _starter_sha256() != sha256:
        raise ConfigError(f"{p} was trained on another version of the starter encoder than the one installed.",
                          "Retrain the report model (radfm train report --phantoms N) for this encoder.")
    config = RadFMConfig.from_pretrained(str(p))
    encoder = load_starter_encoder()
    if enc_meta.get("lora"):  # SHA-256 of the encoder checked against the adapter's record, then merged
        from radfm.adapters import load_encoder_adapter

        encoder = load_encoder_adapter(encoder, p / enc_meta["lora"])
    model = RadFMForReportGeneration(config, encoder=encoder)
    state = load_file(str(p / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    bad = [k for k in missing if not k.startswith("encoder.") and k not in tied]
    if bad or unexpected:
        raise ConfigError(f"{p}/model.safetensors does not fit its config (missing {bad[:5]}, "
                          f"unexpected {list(unexpected)[:5]}).")
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def build_report_vlm(
    tokenizer: Any,
    *,
    encoder: Any,
    language_model: Any,
    bridge_config: RadFMBridgeConfig | dict[str, Any] | None = None,
) -> RadFMForReportGeneration:
    """Assemble encoder + bridge + LLM for ``tokenizer`` (resizing the LLM's vocabulary if needed)."""
    lm = language_model
    if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    vid = tokenizer.convert_tokens_to_ids(VOLUME_TOKEN)
    if vid is None or vid == tokenizer.unk_token_id:
        raise ConfigError(f"the tokenizer has no {VOLUME_TOKEN} token.",
                          "Add it with radfm.tasks.report.tokenizer.add_report_tokens(tokenizer).")
    return RadFMForReportGeneration.from_parts(lm, encoder=encoder, bridge_config=bridge_config,
                                               volume_token_id=int(vid))
