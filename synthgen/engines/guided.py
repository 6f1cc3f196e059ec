"""Constrained output (`guided:` of a stage): the one validator, and the mapping to vLLM.

Every engine and the stage code judge an output with `validate`: `jsonschema` for a JSON
schema, `re.fullmatch` for a regular expression, membership for a choice. vLLM enforces the
constraint while decoding (`structured_outputs`); the transformers and fake engines sample,
validate and resample with a derived seed up to `guided.max_attempts` times; a sample that
still fails carries `error` starting with `SCHEMA_INVALID`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from synthgen.config.stages import GuidedConfig

SCHEMA_INVALID = "schema_invalid: "


def validate(text: str, guided: GuidedConfig) -> tuple[bool, Any, str | None]:
    """(ok, value, error): the parsed JSON value for `json_schema`, the text otherwise."""
    if guided.json_schema is not None:
        try:
            value = json.loads(text)
        except ValueError as exc:
            return False, None, f"not JSON: {exc}"
        try:
            jsonschema.validate(value, guided.json_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            return False, value, f"at {where}: {exc.message}"
        except jsonschema.SchemaError as exc:
            return False, value, f"invalid json_schema: {exc.message}"
        return True, value, None
    if guided.regex is not None:
        if re.fullmatch(guided.regex, text) is None:
            return False, text, f"does not match regex {guided.regex!r}"
        return True, text, None
    choices = guided.choice or []
    if text not in choices:
        return False, text, f"not one of {choices!r}"
    return True, text, None


def spec_kwargs(guided: GuidedConfig) -> dict[str, Any]:
    """Keyword arguments of vLLM's `StructuredOutputsParams` for this constraint."""
    if guided.json_schema is not None:
        return {"json": guided.json_schema}
    if guided.regex is not None:
        return {"regex": guided.regex}
    return {"choice": list(guided.choice or [])}


def vllm_params(vllm_module: Any, guided: GuidedConfig) -> dict[str, Any]:
    """The `SamplingParams` keyword argument that makes vLLM decode under `guided`:
    `structured_outputs=StructuredOutputsParams(...)` (vLLM >= 0.11), or the older
    `guided_decoding=GuidedDecodingParams(...)` where only that exists."""
    sampling_mod = getattr(vllm_module, "sampling_params", None)
    cls = getattr(sampling_mod, "StructuredOutputsParams", None)
    if cls is not None:
        return {"structured_outputs": cls(**spec_kwargs(guided))}
    old = getattr(sampling_mod, "GuidedDecodingParams", None)
    if old is not None:
        return {"guided_decoding": old(**spec_kwargs(guided))}
    raise TypeError(
        "this vLLM has neither sampling_params.StructuredOutputsParams nor "
        "GuidedDecodingParams: guided stages need vLLM >= 0.6"
    )


def key(guided: GuidedConfig) -> str:
    """A stable cache key of the constraint (the attempt count does not change it)."""
    return json.dumps(spec_kwargs(guided), sort_keys=True)


FINITE_LIMIT = 256  # most instances a finite constraint may have to be decoded as a choice


def finite_instances(guided: GuidedConfig, limit: int = FINITE_LIMIT) -> list[str] | None:
    """Every output `guided` allows, when they are few: the `choice` list, or the instances
    of a JSON schema built only of enums, consts, booleans, small integer ranges and objects
    of those (a judge's `{"score": 1..10}`, an extractor's enums), as canonical JSON text.
    None when the set is infinite or larger than `limit` (regex, free strings, numbers).

    An engine without a grammar backend (transformers) decodes such a constraint exactly:
    it scores every instance under the model and samples one, instead of resampling free
    text until it happens to validate."""
    if guided.choice is not None:
        return list(guided.choice) if len(guided.choice) <= limit else None
    if guided.json_schema is None:
        return None
    values = _finite_values(guided.json_schema, limit)
    if values is None:
        return None
    return [json.dumps(v, ensure_ascii=False) for v in values]


def _finite_values(schema: Any, limit: int) -> list[Any] | None:
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        enum = list(schema["enum"])
        return enum if len(enum) <= limit else None
    kind = schema.get("type")
    if kind == "boolean":
        return [True, False]
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo < limit:
            return list(range(lo, hi + 1))
        return None
    if kind == "object" and isinstance(schema.get("properties"), dict):
        if schema.get("additionalProperties") not in (None, False):
            return None
        combos: list[dict[str, Any]] = [{}]
        for name, sub in schema["properties"].items():  # every property present, in order
            options = _finite_values(sub, limit)
            if options is None or len(combos) * len(options) > limit:
                return None
            combos = [{**c, name: o} for c in combos for o in options]
        return combos
    return None
