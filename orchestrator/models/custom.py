"""custom: a model built by the user's own factory function (model.arch: custom, model.factory)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Sequence

from torch import nn

from orchestrator.errors import OrchestratorError
from orchestrator.models.registry import Architecture, ModelInputs
from orchestrator.spec import CustomModelSpec


def load_factory(path: str, code_dirs: Sequence[str] = ()):
    """The callable `module:attr` names. The module is imported from Python's path, else from
    `code_dirs`: the spec's folder, recorded in the loop config and in every checkpoint's model.json,
    so that the driver, evaluation, serving replicas and a submitted job's driver resolve it the
    same way, from any working directory."""
    module_name, _, attr = path.partition(":")
    dirs = list(dict.fromkeys(str(d) for d in code_dirs if d))

    def cannot(e: ImportError, where: str = "") -> OrchestratorError:
        return OrchestratorError(f"model.factory {path!r}: cannot import module {module_name!r}: {e}{where}")

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        extra = [d for d in dirs if d not in sys.path and os.path.isdir(d)]
        looked = f" (looked in Python's path{' and in ' + ', '.join(dirs) if dirs else ''})"
        if e.name != module_name.split(".")[0] or not extra:
            raise cannot(e, looked) from None
        sys.path.extend(extra)  # after the rest: a folder of the spec's never shadows an installed module
        try:
            module = importlib.import_module(module_name)
        except ImportError as e2:
            raise cannot(e2, looked) from None
    except ImportError as e:
        raise cannot(e) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise OrchestratorError(f"model.factory {path!r}: {module_name} has no callable {attr!r}")
    return fn


def factory_extras(fn, extras: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The extras (vocab_size, max_length) a custom factory takes: by name, or all with **kwargs."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: pass nothing extra
        return {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in extras.items() if v is not None and k not in given and (takes_all or k in params)}


def build(spec: CustomModelSpec, inputs: ModelInputs) -> nn.Module:
    fn = load_factory(spec.factory, inputs.code_dirs)
    kwargs = dict(spec.kwargs)
    kwargs.update(factory_extras(fn, {"vocab_size": inputs.vocab_size, "max_length": inputs.max_length}, kwargs))
    model = fn(input_shape=list(inputs.input_shape), num_outputs=inputs.num_outputs, dropout=inputs.dropout, **kwargs)
    if not isinstance(model, nn.Module):
        raise OrchestratorError(f"model.factory {spec.factory!r} returned {type(model).__name__}, not an nn.Module")
    return model


ARCHITECTURE = Architecture(name="custom", spec=CustomModelSpec, build=build)
