"""What a run would trip on after it started, checked before (``paretoedge validate``): the
config's references import and are callable (nothing is called), a checkpoint reads and fits
the factory's module (the factory is called once), an ONNX file loads in onnxruntime (and has
the dynamic batch axis ``runtime.static_shape: false`` would keep).

Each problem is one line naming the config file and the field (or the file it points at).
Torch and onnxruntime are imported only by the checks that need them, behind ``spaces``.
"""

from __future__ import annotations

from search.config import StudyConfig
from search.errors import ConfigError
from search.study.preparation import static_shape_problem, torch_model_spec
from spaces import SpacesError, load_reference


def reference_problem(field: str, reference: str, config: StudyConfig) -> str | None:
    """Why ``reference`` (the value of ``field``) cannot be used, or None: it must import and
    name something callable. Nothing is called."""
    try:
        target = load_reference(reference, config.base_dir)
    except SpacesError as exc:
        return f"{field}: {exc}"
    if not callable(target):
        return f"{field}: {reference!r} is not callable ({type(target).__name__})"
    return None


def _model_file_problem(config: StudyConfig, factory_ok: bool) -> str | None:
    try:
        if config.model.onnx is not None:
            from spaces.onnx_graph.model_file import check_onnx_file

            check_onnx_file(config.base_dir / config.model.onnx)
            if config.runtime.static_shape is not None:
                from spaces.onnx_graph.model_file import has_dynamic_input

                return static_shape_problem(
                    config, has_dynamic_input(config.base_dir / config.model.onnx))
        elif config.model.checkpoint is not None:
            from spaces.torch_model.preparation import check_checkpoint

            # a factory that does not import is reported already: then the file alone
            check_checkpoint(torch_model_spec(config), against_factory=factory_ok)
    except SpacesError as exc:
        return str(exc)
    return None


def source_problems(config: StudyConfig) -> list[str]:
    """Every problem of the model and data sources of ``config`` (empty: a run gets past
    them)."""
    problems: list[str] = []
    factory_ok = True
    if config.model.factory is not None:
        problem = reference_problem("model.factory", config.model.factory, config)
        factory_ok = problem is None
        problems += [problem] if problem else []
    problems += [p for p in [_model_file_problem(config, factory_ok)] if p]
    loader = reference_problem("data.loader", config.data.loader, config)
    problems += [loader] if loader else []
    return problems


def check_sources(config: StudyConfig, source: str) -> None:
    """Raise :class:`ConfigError` listing every problem of :func:`source_problems`, each
    prefixed with ``source`` (the config file)."""
    problems = [f"{source}: {p}" for p in source_problems(config)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more, problems)
