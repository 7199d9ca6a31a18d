"""What Ollama really reads: its environment variables and Modelfile parameters, defined once.

Source: FACTS.md §3 (``envconfig/config.go`` ``AsMap()`` at v0.33.0-rc2, the variables read
outside envconfig, and the ``AsMap`` diffs across tags for removed names) and FACTS.md §6
(``api.Options`` JSON tags, ``parser.go`` ``deprecatedParameters``, and the parameters that are a
hard error). ``doctor`` checks a unit's environment and the models' parameters against these
tables; nothing else in the package should keep its own copy.

Ollama silently ignores an ``OLLAMA_*`` name it does not know, so a misspelt or invented
variable (``OLLAMA_GPU_MEMORY_FRACTION`` is a popular one) just does nothing. That is why the
tables also carry the fix: the real knob to use instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Variables Ollama reads at HEAD (envconfig ``AsMap`` plus the few read elsewhere).
KNOWN_OLLAMA_VARIABLES: frozenset[str] = frozenset(
    {
        "OLLAMA_HOST",
        "OLLAMA_ORIGINS",
        "OLLAMA_MODELS",
        "OLLAMA_KEEP_ALIVE",
        "OLLAMA_LOAD_TIMEOUT",
        "OLLAMA_NUM_PARALLEL",
        "OLLAMA_MAX_LOADED_MODELS",
        "OLLAMA_MAX_QUEUE",
        "OLLAMA_FLASH_ATTENTION",
        "OLLAMA_KV_CACHE_TYPE",
        "OLLAMA_CONTEXT_LENGTH",
        "OLLAMA_GPU_OVERHEAD",
        "OLLAMA_SCHED_SPREAD",
        "OLLAMA_LLM_LIBRARY",
        "OLLAMA_DEBUG",
        "OLLAMA_DEBUG_LOG_REQUESTS",
        "OLLAMA_NOPRUNE",
        "OLLAMA_NOHISTORY",
        "OLLAMA_NO_CLOUD",
        "OLLAMA_REMOTES",
        "OLLAMA_IGPU_ENABLE",
        "OLLAMA_VULKAN",
        "OLLAMA_GO_TEMPLATE",
        "OLLAMA_MAX_TRANSFER_STREAMS",
        "OLLAMA_EDITOR",
        # read outside envconfig (routes.go, library discovery)
        "OLLAMA_EXPERIMENT",
        "OLLAMA_LIBRARY_PATH",
    }
)

#: Variables older releases read and HEAD ignores, with the release that dropped them.
REMOVED_OLLAMA_VARIABLES: dict[str, str] = {
    "OLLAMA_RUNNERS_DIR": "removed after 0.5.x; runners live in lib/ollama next to the binary",
    "OLLAMA_TMPDIR": "removed after 0.5.x",
    "OLLAMA_MAX_VRAM": "removed after 0.2.x; use OLLAMA_GPU_OVERHEAD to keep VRAM free",
    "OLLAMA_INTEL_GPU": "removed in 0.13.0",
    "OLLAMA_MULTIUSER_CACHE": "removed after 0.24.x (llama-server era)",
    "OLLAMA_NEW_ENGINE": "removed after 0.24.x (llama-server era)",
    "OLLAMA_NEW_ESTIMATES": "only read by 0.11.x",
}

#: Names people set believing Ollama reads them; it never did (checked in every tag).
MISTAKEN_OLLAMA_VARIABLES: dict[str, str] = {
    "OLLAMA_GPU_MEMORY_FRACTION": "not an Ollama variable; use OLLAMA_GPU_OVERHEAD "
    "(bytes of VRAM to keep free per GPU)",
    "OLLAMA_GPU_PRECISION": "not an Ollama variable; use OLLAMA_KV_CACHE_TYPE (f16, q8_0, q4_0) "
    "or OLLAMA_FLASH_ATTENTION",
}

#: Non-OLLAMA_ variables that change what Ollama does (shown in its ``server config`` line).
GPU_SELECTION_VARIABLES: frozenset[str] = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "GGML_VK_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
        "HSA_OVERRIDE_GFX_VERSION",
        "LLAMA_ARG_FIT",
        "LLAMA_ARG_FIT_TARGET",
    }
)


class Verdict(enum.Enum):
    """How Ollama treats a name (environment variable or Modelfile parameter)."""

    #: read and honoured
    KNOWN = "known"
    #: accepted but ignored (a removed variable; a deprecated parameter)
    IGNORED = "ignored"
    #: a Modelfile parameter that makes ``ollama create`` fail
    REJECTED = "rejected"
    #: never read by any release
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class NameCheck:
    """The verdict on one name, with the fix an operator should apply."""

    name: str
    verdict: Verdict
    #: one short sentence; empty for KNOWN
    hint: str = ""


def classify_env_variable(name: str) -> NameCheck:
    """Classify one ``OLLAMA_*`` environment variable name (other names are KNOWN)."""
    if not name.startswith("OLLAMA_") or name in KNOWN_OLLAMA_VARIABLES:
        return NameCheck(name, Verdict.KNOWN)
    if name in REMOVED_OLLAMA_VARIABLES:
        return NameCheck(name, Verdict.IGNORED, REMOVED_OLLAMA_VARIABLES[name])
    if name in MISTAKEN_OLLAMA_VARIABLES:
        return NameCheck(name, Verdict.UNKNOWN, MISTAKEN_OLLAMA_VARIABLES[name])
    return NameCheck(name, Verdict.UNKNOWN, "Ollama never reads this variable; check the spelling")


#: Valid ``PARAMETER`` names at HEAD with their type (``api.Options`` + ``Runner`` JSON tags).
MODELFILE_PARAMETERS: dict[str, str] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "string",
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
}

#: Accepted with ``warning: parameter X is deprecated`` and then ignored (parser.go).
DEPRECATED_PARAMETERS: dict[str, str] = {
    "penalize_newline": "removed from the API in 0.5.5; ignored",
    "mirostat": "removed in 0.7.0; ignored",
    "mirostat_tau": "removed in 0.7.0; ignored",
    "mirostat_eta": "removed in 0.7.0; ignored",
    "low_vram": "removed in 0.7.0; ignored",
    "f16_kv": "removed in 0.7.0; ignored (use OLLAMA_KV_CACHE_TYPE)",
    "logits_all": "removed in 0.7.0; ignored",
    "vocab_only": "removed in 0.7.0; ignored",
    "use_mlock": "removed in 0.7.0; ignored",
}

#: A hard ``unknown parameter`` error in a Modelfile today (removed long ago).
REJECTED_PARAMETERS: dict[str, str] = {
    "tfs_z": "removed in 0.5.2; `ollama create` fails with unknown parameter",
    "numa": "removed in 0.3.4; `ollama create` fails with unknown parameter",
    "num_gqa": "removed in 0.1.35; `ollama create` fails with unknown parameter",
    "rope_frequency_base": "removed in 0.1.35; `ollama create` fails with unknown parameter",
    "rope_frequency_scale": "removed in 0.1.35; `ollama create` fails with unknown parameter",
}


def classify_parameter(name: str) -> NameCheck:
    """Classify one Modelfile ``PARAMETER`` name (case as written; Ollama matches lowercase)."""
    key = name.lower()
    if key in MODELFILE_PARAMETERS:
        return NameCheck(name, Verdict.KNOWN)
    if key in DEPRECATED_PARAMETERS:
        return NameCheck(name, Verdict.IGNORED, DEPRECATED_PARAMETERS[key])
    if key in REJECTED_PARAMETERS:
        return NameCheck(name, Verdict.REJECTED, REJECTED_PARAMETERS[key])
    # Through a Modelfile an unknown name fails create; through API options it is ignored
    # with "invalid option provided". A stored model can only carry it via the latter path.
    return NameCheck(name, Verdict.REJECTED, "not an Ollama parameter; `ollama create` rejects it")


def modelfile_parameter_names(text: str) -> list[str]:
    """The ``PARAMETER`` names of a Modelfile, in order (instructions are case-insensitive).

    Only single-line ``PARAMETER name value`` instructions exist, so a line scan suffices; lines
    inside a triple-quoted block (TEMPLATE, SYSTEM, ...) are skipped so their text is never
    mistaken for instructions.
    """
    names: list[str] = []
    in_block = False
    for raw in text.splitlines():
        line = raw.strip()
        if in_block:
            if line.count('"""') % 2 == 1:
                in_block = False
            continue
        if not line or line.startswith("#"):
            continue
        if line.count('"""') % 2 == 1:
            in_block = True
            continue
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].upper() == "PARAMETER":
            names.append(parts[1])
    return names


__all__ = [
    "DEPRECATED_PARAMETERS",
    "GPU_SELECTION_VARIABLES",
    "KNOWN_OLLAMA_VARIABLES",
    "MISTAKEN_OLLAMA_VARIABLES",
    "MODELFILE_PARAMETERS",
    "REJECTED_PARAMETERS",
    "REMOVED_OLLAMA_VARIABLES",
    "NameCheck",
    "Verdict",
    "classify_env_variable",
    "classify_parameter",
    "modelfile_parameter_names",
]
