"""Load a base model quantised to 4 or 8 bits with bitsandbytes and prepare it for QLoRA training."""

from __future__ import annotations

import logging
from typing import Any

import torch
from packaging.version import Version
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel
from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

from trainers.config import QUANTIZATION_BITS
from trainers.model_loading import from_pretrained

logger = logging.getLogger(__name__)

# bitsandbytes' README: CUDA GPUs need compute capability 6.0 (Pascal) or newer for 4- and 8-bit.
MIN_CUDA_CAPABILITY = (6, 0)
INT8_CAST_MESSAGE = "MatMul8bitLt: inputs will be cast from"


class _Int8CastFilter(logging.Filter):
    """Drop bitsandbytes' note that int8 inputs are cast to float16, which it logs on every matmul call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(INT8_CAST_MESSAGE)


_INT8_CAST_FILTER = _Int8CastFilter()


def quantization_config(bits: int, bf16: bool) -> BitsAndBytesConfig:
    """Return the bitsandbytes settings: NF4 with double quantisation for 4 bits, LLM.int8() for 8 bits."""
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization_bits must be one of {', '.join(map(str, QUANTIZATION_BITS))}, got {bits}")


def quantization_problems(bits: int, device: str) -> list[str]:
    """Return why the base model cannot be quantised to `bits` on `device`, as "quantization_bits: ..." lines."""
    if isinstance(bits, bool) or bits not in QUANTIZATION_BITS:
        return [f"quantization_bits: must be 4 or 8, got {bits}"]
    try:
        import bitsandbytes
    except ImportError as error:
        return [f"quantization_bits: {bits}-bit training needs the bitsandbytes package, which cannot be imported "
                f"({error}); install bitsandbytes>={BITSANDBYTES_MIN_VERSION}"]
    if Version(bitsandbytes.__version__) < Version(BITSANDBYTES_MIN_VERSION):
        return [f"quantization_bits: bitsandbytes {bitsandbytes.__version__} is installed, but transformers needs "
                f"{BITSANDBYTES_MIN_VERSION} or newer"]
    if device not in getattr(bitsandbytes, "supported_torch_devices", ()):
        return [f"quantization_bits: bitsandbytes {bitsandbytes.__version__} cannot quantise on {device}"]
    if device == "cuda":
        return _cuda_problems(bits)
    return []


def _cuda_problems(bits: int) -> list[str]:
    """Check that the GPU is there, is recent enough, and that bitsandbytes loaded its CUDA library."""
    if not torch.cuda.is_available():
        return [f"quantization_bits: {bits}-bit training on cuda needs a CUDA GPU, and none is available"]
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CUDA_CAPABILITY:
        return [f"quantization_bits: bitsandbytes needs a GPU of compute capability "
                f"{'.'.join(map(str, MIN_CUDA_CAPABILITY))} or newer, and this one has "
                f"{'.'.join(map(str, capability))}"]
    from bitsandbytes import cextension

    # bitsandbytes swaps in this stand-in when no native library matches the CUDA runtime.
    if isinstance(cextension.lib, cextension.ErrorHandlerMockBNBNativeLibrary):
        return ["quantization_bits: bitsandbytes found no CUDA library that matches this machine's CUDA runtime "
                "(python -m bitsandbytes says why)"]
    return []


def load_quantized_model(base_model: str, bits: int, device: str, bf16: bool,
                         gradient_checkpointing: bool = True, revision: str | None = None) -> PreTrainedModel:
    """Load the base model quantised to `bits`, frozen and prepared for k-bit training with LoRA."""
    # Errors from transformers and bitsandbytes (OSError, ValueError, KeyError, ImportError, RuntimeError) pass
    # through unchanged for the caller to wrap: importing trainers.lora's ModelLoadError here would be a cycle.
    options: dict[str, Any] = {
        "quantization_config": quantization_config(bits, bf16),
        "dtype": torch.bfloat16 if bf16 else torch.float32,
        # The training process sees exactly one GPU, so the whole model goes onto it.
        "device_map": {"": 0} if device == "cuda" else device,
    }
    if revision is not None:
        options["revision"] = revision
    logger.info("Loading %s quantised to %s bits on %s.", base_model, bits, device)
    model = from_pretrained(base_model, options)
    if bits == 4 and device == "cpu":
        _disable_cpu_inference_packing(model)
    if bits == 8:
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_CAST_FILTER)
    # Freezes every base weight and upcasts the remaining half-precision ones (norms, embeddings) to float32.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        # Not through prepare_model_for_kbit_training, which calls transformers' deprecated alias. Non-reentrant
        # checkpointing passes gradients to LoRA layers even though the frozen embedding output needs none.
        model.activation_checkpointing_enable({"use_reentrant": False})
        # The cache is useless in training and transformers warns that checkpointing turns it off.
        model.config.use_cache = False
    return model


def _disable_cpu_inference_packing(model: PreTrainedModel) -> None:
    """Keep bitsandbytes from repacking 4-bit weights for its AVX512-BF16 inference kernel."""
    # On such CPUs bitsandbytes 0.50 repacks a layer's weight on its first eval-mode forward without gradients
    # (an evaluation). The repacking asserts that out_features is a multiple of 32, and the packed kernel computes
    # in bf16 and has no backward, so training steps after an evaluation would silently stop learning.
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
