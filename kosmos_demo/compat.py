"""What this project needs of transformers: stated where transformers has a public way, checked where it has none.

transformers changes its defaults between minor releases (5.25 turned hub
kernels on in every ``from_pretrained``) and renames internals (5.24 renamed
the position embedding's ``past_key_values_length`` to ``cache_length``). So:

- every model load goes through :func:`load_kosmos2`, which states the loading
  behaviour the project needs (:data:`LOADING`) instead of inheriting defaults;
- the few assumptions made about internals that have no public path are
  checked where they are used, and a broken one raises
  :class:`TransformersAssumptionError`: one line naming the transformers version
  and what changed, never a silently wrong heatmap or a hook that stops firing.
"""

from __future__ import annotations

import re

TESTED_TRANSFORMERS = ">=5.24.0,<5.26"
"""The transformers releases the suite has passed on; requirements.txt and pyproject.toml carry the same range."""

LOADING = {"use_kernels": False}
"""``from_pretrained`` options every model load states: hub kernels off (5.25 turns them on when not given).

Kernels fetch compiled code from the Hub at load time: unreachable here, and
untested with the attention recorder.
"""


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_kosmos2(source, *, attn_implementation: str, **options):
    """``Kosmos2ForConditionalGeneration.from_pretrained`` with :data:`LOADING` and the attention asked for."""
    from transformers import Kosmos2ForConditionalGeneration

    return Kosmos2ForConditionalGeneration.from_pretrained(
        source, attn_implementation=attn_implementation, **{**LOADING, **options}
    )


class TransformersAssumptionError(RuntimeError):
    """An internal of transformers that kosmos-demo relies on is not what it was; the message is one line."""


def assumption_failed(what: str, found: str) -> TransformersAssumptionError:
    """The one-line diagnosis: the version, the assumption, what was found instead, what to do."""
    return TransformersAssumptionError(
        f"transformers {transformers_version()} broke an assumption of kosmos-demo: {what} (found {found}); "
        f"install transformers{TESTED_TRANSFORMERS} (tested) or update kosmos_demo for this release."
    )


# --- why a load failed -----------------------------------------------------

_PIP_INSTALL = re.compile(r"pip install (?:-U |--upgrade )?[`'\"]?([A-Za-z0-9_.\-\[\]]+(?:[<>=!~]=?[^\s`'\",)]+)*)")
_REQUIRED_BUT_FOUND = re.compile(r"([A-Za-z0-9_.\-]+[<>=!~]=?[^\s]+) is required .* but found ([A-Za-z0-9_.\-]+==\S+?)\.?$")
_COMPATIBLE_RANGE = re.compile(r"install a compatible version \(([\d.]+) <= version < ([\d.]+)\)")
_NETWORK = re.compile(r"connect|connection|offline|network|timed? ?out|resolve host|not in the local cache|"
                      r"local_files_only|LocalEntryNotFound|could not reach|cached files", re.IGNORECASE)


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def classify_load_failure(error: BaseException | str) -> tuple[str, str | None]:
    """``(kind, what to install)`` for a failed load; kind is package, version, network or checkpoint.

    >>> classify_load_failure(ValueError("Kernels are not available. Please install a compatible version "
    ...     "(0.19.1 <= version < 0.20.0), e.g. `pip install kernels==0.19.1`"))
    ('package', 'kernels>=0.19.1,<0.20.0')
    >>> classify_load_failure(ImportError("tokenizers>=0.22 is required for a normal functioning of this module, "
    ...     "but found tokenizers==0.20.0."))
    ('version', 'tokenizers>=0.22')
    >>> classify_load_failure(OSError("We couldn't connect to the Hub"))
    ('network', None)
    >>> classify_load_failure(OSError("no file named model.safetensors"))
    ('checkpoint', None)
    """
    errors = list(_chain(error)) if isinstance(error, BaseException) else []
    texts = [str(e) for e in errors] if errors else [str(error)]
    for text in texts:
        if found := _REQUIRED_BUT_FOUND.search(text):
            return "version", found.group(1)
        if found := _COMPATIBLE_RANGE.search(text):
            name = _PIP_INSTALL.search(text)
            package = re.split(r"[<>=!~\[]", name.group(1))[0] if name else "the package"
            return "package", f"{package}>={found.group(1)},<{found.group(2)}"
        if "does not recognize this architecture" in text or "is out of date" in text:
            return "version", f"transformers{TESTED_TRANSFORMERS}"
    for e in errors:
        if isinstance(e, ModuleNotFoundError) and e.name:
            return "package", e.name.split(".")[0]
    for text in texts:
        if (name := _PIP_INSTALL.search(text)) and not name.group(1).startswith(("git+", "--")):
            return "package", name.group(1)
    if any(isinstance(e, ImportError) for e in errors):
        return "package", None
    if any(_NETWORK.search(text) for text in texts) or any(
            type(e).__name__ in {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectionError",
                                 "ConnectTimeout", "ReadTimeout"} for e in errors):
        return "network", None
    return "checkpoint", None
