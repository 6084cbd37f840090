"""Serving radfm over HTTP: the FastAPI app, LLM backends (vLLM, transformers) and upload handling.

- :func:`create_app` (``radfm.serve.app``): the service; task routers plug in through the
  ``radfm.routes`` entry points, each ``routes(state: ServeState) -> APIRouter``.
- :class:`LLMBackend` (``radfm.serve.backends``): ``generate(prompt_embeds, *, max_new_tokens,
  adapter=None) -> token ids``; :class:`VLLMBackend` and :class:`TransformersBackend`.
- :func:`save_upload_to_tmp` (``radfm.serve.uploads``): NIfTI / DICOM / zipped series → a path.
- :class:`VLLMServer` (``radfm.serve.vllm_server``): the vLLM process from its own virtualenv.

Names are imported lazily: ``radfm --help`` registers ``radfm serve`` without importing FastAPI
or torch, and the ``serve`` extra is needed only when serving.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.serve.app": ["ServeSettings", "ServeState", "create_app"],
    "radfm.serve.backends": ["LLMBackend", "TransformersBackend", "VLLMBackend", "UnknownAdapterError", "BackendUnavailableError"],
    "radfm.serve.uploads": ["save_upload_to_tmp", "discard_upload", "UnsupportedMediaError"],
    "radfm.serve.security": ["load_api_keys"],
    "radfm.serve.vllm_server": ["VLLMServer", "find_vllm_python"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
