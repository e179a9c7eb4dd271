"""Export PEFT LoRA weights as a GGUF LoRA adapter that llama.cpp loads (`lora_path`).

What llama.cpp expects (src/llama-adapter.cpp; llama.cpp's convert_lora_to_gguf.py writes it):
- metadata `general.architecture` equal to the base model's, `general.type = "adapter"`,
  `adapter.type = "lora"`, `adapter.lora.alpha`; llama.cpp scales B·A·x by alpha / rank, with the
  rank read from the tensors, exactly PEFT's scale (no rsLoRA);
- per adapted weight `blk.N.<name>.weight.lora_a` with ggml shape [n_in, r] and `.lora_b` with
  [r, n_out]; ggml lists dimensions innermost first, so as numpy arrays these are (r, n_in) and
  (n_out, r): PEFT's lora_A / lora_B weights as they are, no transposes;
- the base GGUF stores attn_q / attn_k rows permuted for llama.cpp's rope (convert_hf_to_gguf's
  `permute`), and transformers un-permutes them on load. The delta B·A must land in llama.cpp's
  row order, so lora_b of q and k (the output rows) gets the same permutation; lora_a is untouched.

Weights are written as f32: the file is small (~20 MB for SmolLM2-135M at r=16) and f16 would
move llama.cpp's loss away from PyTorch's for no gain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# HF llama module -> llama.cpp tensor name (gguf's MODEL_TENSOR names for LLM_ARCH_LLAMA)
LLAMA_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(
    r"layers\.(?P<layer>\d+)\.(?P<module>self_attn\.\w+|mlp\.\w+)\.lora_(?P<ab>[AB])\.")


def permute_rows(weights: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    """convert_hf_to_gguf's llama `permute` on the first (output) axis, for `n_head` heads."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_rows(weights: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    """The inverse of `permute_rows` (what transformers does to q/k when it loads a GGUF)."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(state: Mapping[str, np.ndarray[Any, Any]], *, n_head: int, n_head_kv: int
                 ) -> dict[str, np.ndarray[Any, Any]]:
    """PEFT parameter names -> llama.cpp adapter tensors, with the q/k permutation applied."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for key, value in state.items():
        m = _PEFT_KEY.search(key)
        if m is None:
            raise ValueError(f"unexpected LoRA parameter {key!r}")
        module = m["module"]
        if module not in LLAMA_NAMES:
            raise ValueError(f"no llama.cpp tensor for LoRA on {module!r}")
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if m["ab"] == "B" and module == "self_attn.q_proj":
            arr = np.ascontiguousarray(permute_rows(arr, n_head))
        elif m["ab"] == "B" and module == "self_attn.k_proj":
            arr = np.ascontiguousarray(permute_rows(arr, n_head_kv))
        suffix = "lora_a" if m["ab"] == "A" else "lora_b"
        out[f"blk.{m['layer']}.{LLAMA_NAMES[module]}.weight.{suffix}"] = arr
    for name in out:
        pair = name[:-1] + ("b" if name.endswith("a") else "a")
        if pair not in out:
            raise ValueError(f"LoRA tensor {name} has no {pair}")
    return out


def write_lora_gguf(path: Path, state: Mapping[str, np.ndarray[Any, Any]], *, alpha: float,
                    n_head: int, n_head_kv: int, arch: str = "llama",
                    name: str = "travel-chat LoRA") -> Path:
    """Write the adapter; return `path`. Written to a temp name first, then renamed, so a
    reader never sees half a file."""
    import gguf

    tensors = gguf_tensors(state, n_head=n_head, n_head_kv=n_head_kv)
    if not tensors:
        raise ValueError("no LoRA weights to export")
    tmp = path.with_name(path.name + ".part")
    writer: Any = gguf.GGUFWriter(str(tmp), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for tname in sorted(tensors, key=_tensor_order):
        writer.add_tensor(tname, tensors[tname])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def _tensor_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name


@dataclass(frozen=True)
class LoraAdapter:
    """A GGUF LoRA adapter read back in PEFT's terms (to continue training from it)."""

    state: dict[str, np.ndarray[Any, Any]]  # PEFT parameter name -> weights
    alpha: float
    rank: int
    target_modules: tuple[str, ...]  # e.g. q_proj, down_proj


_GGUF_KEY = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<name>\w+)\.weight\.lora_(?P<ab>[ab])$")


def read_lora_gguf(path: Path, *, n_head: int, n_head_kv: int) -> LoraAdapter:
    """Read an adapter `write_lora_gguf` wrote (or llama.cpp's converter: same layout), undoing
    the q/k row permutation, under the parameter names PEFT gives a llama model's LoRA."""
    import gguf

    reader: Any = gguf.GGUFReader(str(path))
    kind = _field(reader, gguf.Keys.Adapter.TYPE, path)
    if bytes(kind.parts[kind.data[0]]).decode() != "lora":
        raise ValueError(f"{path}: not a LoRA adapter (adapter.type is not lora)")
    alpha = float(_field(reader, gguf.Keys.Adapter.LORA_ALPHA, path).parts[-1][0])
    peft_names = {v: k for k, v in LLAMA_NAMES.items()}
    state: dict[str, np.ndarray[Any, Any]] = {}
    ranks: set[int] = set()
    for tensor in reader.tensors:
        m = _GGUF_KEY.match(tensor.name)
        if m is None or m["name"] not in peft_names:
            raise ValueError(f"{path}: unexpected tensor {tensor.name!r} in a LoRA adapter")
        module = peft_names[m["name"]]
        # ggml lists dimensions innermost first: the numpy shape is the reverse.
        arr = np.array(tensor.data, dtype=np.float32).reshape(
            [int(d) for d in reversed(tensor.shape)])
        if m["ab"] == "b" and module == "self_attn.q_proj":
            arr = unpermute_rows(arr, n_head)
        elif m["ab"] == "b" and module == "self_attn.k_proj":
            arr = unpermute_rows(arr, n_head_kv)
        ranks.add(arr.shape[0] if m["ab"] == "a" else arr.shape[1])
        ab = "A" if m["ab"] == "a" else "B"
        state[f"base_model.model.model.layers.{m['layer']}.{module}.lora_{ab}.default.weight"] = arr
    if not state:
        raise ValueError(f"{path}: the adapter holds no LoRA tensors")
    if len(ranks) != 1:
        raise ValueError(f"{path}: LoRA tensors of several ranks {sorted(ranks)}")
    modules = tuple(sorted({k.split(".")[-4] for k in state}, key=_module_order))
    return LoraAdapter(state, alpha, ranks.pop(), modules)


def _field(reader: Any, key: str, path: Path) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"{path}: no {key} in the GGUF metadata: not a LoRA adapter")
    return field


def _module_order(name: str) -> int:
    order = [k.split(".")[-1] for k in LLAMA_NAMES]
    return order.index(name) if name in order else len(order)
