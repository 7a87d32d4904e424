"""Container -> local argv: which containers the agent can run, and how their argv changes.

Only the project's own images run, as local processes: a container whose command+args
start with ``python``/``python3`` (optionally with interpreter flags such as ``-u``)
followed by ``-m kaito_inference...`` or ``-m kaito_tuning...``. Everything else (an
adapter image's ``/bin/sh -c cp ...``, an image pusher) is reported as an image the node
cannot pull.

For a runnable container, `translate` rewrites the argv:

- the interpreter becomes the agent's ``--python``;
- container paths under a volume mount become local paths (`MountMap`);
- ``/workspace/weights`` (the weights a private preset's image bakes in) becomes the
  local tiny stand-in model, unless a volume is mounted there;
- the weights fetch (``python -m kaito_inference.fetch --repo R --revision V --cache-dir
  C``, the ``fetch-weights`` init container) runs for real, with ``HF_ENDPOINT`` on the
  agent's hub (``hf_endpoint``: the local stack's hub emulator, which serves the tiny
  stand-in model under every preset's repo at its pinned revision), and fills
  ``C/<R with / as -->@V``, which the server's ``--model`` names. With no hub configured
  it copies the stand-in model into that folder instead;
- CPU adaptations: ``--dtype float16|bfloat16|half`` -> ``float32``,
  ``--tensor-parallel-size N`` -> 1, ``--pipeline-parallel-size`` dropped,
  ``--max-model-len`` capped to the stand-in model's 2048 when it is used (baked weights
  replaced, or a model from the cache the hub filled), and for the inference server
  ``--host`` is the pod IP.

Every change that is not plain mount plumbing is listed in `Translation.adaptations`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kaito.runtime.meta import Obj
from kaito_dev.nodeagent.volumes import MountMap

RUNNABLE_MODULES = ("kaito_inference", "kaito_tuning")
"""``python -m <module>`` prefixes the agent runs (the project's own images)."""

BAKED_WEIGHTS = "/workspace/weights"
"""Where the images bake the preset's weights; replaced by the tiny stand-in model."""

STAND_IN_MAX_LEN = 2048
"""The stand-in model's context (``kaito_inference.tiny_model``'s max_position_embeddings)."""

FETCH_MODULE = "kaito_inference.fetch"
"""The inference image's weights fetcher (the ``fetch-weights`` init container)."""

MODEL_CACHE = "/var/lib/kaito/models"
"""The node's model cache (the workspace controller's hostPath)."""

_COPY_STAND_IN = (
    "import os, shutil, sys\n"
    "src, dst = sys.argv[1], sys.argv[2]\n"
    "if os.path.exists(os.path.join(dst, 'config.json')):\n"
    "    print('stand-in model already in the cache:', dst); sys.exit(0)\n"
    "shutil.rmtree(dst + '.partial', ignore_errors=True)\n"
    "shutil.copytree(src, dst + '.partial')\n"
    "os.replace(dst + '.partial', dst)\n"
    "print('stand-in model copied into the cache:', dst)\n"
)

_GPU_DTYPES = {"float16", "bfloat16", "half", "fp16", "bf16"}


def container_argv(container: Obj) -> list[str]:
    return [str(a) for a in (container.get("command") or [])] + [
        str(a) for a in (container.get("args") or [])
    ]


def _module_of(argv: Sequence[str]) -> tuple[int, str] | None:
    """(index of the module argument, module) for ``python [flags] -m module ...``."""
    if not argv or not os.path.basename(argv[0]).startswith("python"):
        return None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return i, arg[2:]
        if not arg.startswith("-"):
            return None
        i += 1
    return None


def module_of(container: Obj) -> str | None:
    """The ``-m`` module a runnable container runs, or None when it cannot run here."""
    found = _module_of(container_argv(container))
    if found is None:
        return None
    module = found[1]
    if any(module == m or module.startswith(m + ".") for m in RUNNABLE_MODULES):
        return module
    return None


def is_runnable(container: Obj) -> bool:
    return module_of(container) is not None


def is_fetch(container: Obj) -> bool:
    """A weights fetch (``python -m kaito_inference.fetch ...``)."""
    return module_of(container) == FETCH_MODULE


def _under(value: str, folder: str) -> bool:
    return value == folder or value.startswith(folder + "/")


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def unavailable_image_message(container: Obj) -> str:
    return (
        f"image {container.get('image', '')} is not available to the node agent "
        "(it runs only the project's own images as local processes)"
    )


@dataclass
class Translation:
    argv: list[str]
    adaptations: list[str] = field(default_factory=list)
    uses_stand_in_model: bool = False


def _split_flag(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        flag, _, value = arg.partition("=")
        return flag, value
    return arg, None


def translate(
    container: Obj,
    *,
    python: str,
    mounts: MountMap,
    pod_ip: str,
    stand_in_model: Callable[[], str] | None = None,
    hf_endpoint: str | None = None,
) -> Translation:
    """The local argv of a runnable container (see the module docstring).

    ``stand_in_model`` returns the local model folder; it is called only when the argv
    names ``/workspace/weights`` and no volume is mounted there, or for a weights fetch
    when there is no ``hf_endpoint``. ``hf_endpoint``: the hub the fetch downloads from
    (the process's ``HF_ENDPOINT``, which the caller sets); it serves the stand-in.
    """
    argv = container_argv(container)
    found = _module_of(argv)
    if found is None:
        raise ValueError(f"container {container.get('name')} is not runnable by the node agent")
    module_index, module = found
    rest = argv[module_index + 1 :]
    if module == FETCH_MODULE and hf_endpoint is None and stand_in_model is not None:
        return _stand_in_fetch(rest, python=python, mounts=mounts, stand_in_model=stand_in_model)
    out = Translation(argv=[python, *argv[1 : module_index + 1]])
    is_server = module == "kaito_inference"
    weights_mounted = mounts.covers(BAKED_WEIGHTS)
    model_arg = _flag_value(rest, "--model")
    from_cache = model_arg is not None and _under(model_arg, MODEL_CACHE)
    stand_in_context = (stand_in_model is not None and not weights_mounted) or (
        hf_endpoint is not None and from_cache
    )
    if module == FETCH_MODULE and hf_endpoint is not None:
        repo, revision = _flag_value(rest, "--repo"), _flag_value(rest, "--revision")
        out.uses_stand_in_model = True
        out.adaptations.append(
            f"fetch of {repo}@{revision} from the local hub emulator {hf_endpoint} "
            "(HF_ENDPOINT): the repo holds the tiny stand-in model, not the preset's weights"
        )

    cached: list[str] = []

    def local(value: str) -> str:
        if (
            (stand_in_model is not None or hf_endpoint is not None)
            and is_server
            and _under(value, MODEL_CACHE)
        ):
            out.uses_stand_in_model = True  # what the fetch put there
            cached.append(value)
        mapped = mounts.translate(value)
        if mapped != value:
            return mapped
        if not weights_mounted and (
            value == BAKED_WEIGHTS or value.startswith(BAKED_WEIGHTS + "/")
        ):
            if stand_in_model is None:
                return value
            out.uses_stand_in_model = True
            return stand_in_model() + value[len(BAKED_WEIGHTS) :]
        return value

    saw_host = False
    i = 0
    while i < len(rest):
        flag, inline = _split_flag(rest[i])
        has_next = inline is None and i + 1 < len(rest) and not rest[i + 1].startswith("--")
        value = inline if inline is not None else (rest[i + 1] if has_next else None)
        consumed = 1 if inline is not None or not has_next else 2
        if flag == "--dtype" and value is not None and value.lower() in _GPU_DTYPES:
            out.adaptations.append(f"--dtype {value} -> float32 (no half precision on CPU)")
            out.argv += ["--dtype", "float32"]
        elif flag == "--tensor-parallel-size" and value is not None and value != "1":
            out.adaptations.append(f"--tensor-parallel-size {value} -> 1 (one CPU process)")
            out.argv += ["--tensor-parallel-size", "1"]
        elif (
            flag == "--max-model-len"
            and value is not None
            and value.isdigit()
            and int(value) > STAND_IN_MAX_LEN
            and stand_in_context
        ):
            out.adaptations.append(
                f"--max-model-len {value} -> {STAND_IN_MAX_LEN} (the stand-in model's context)"
            )
            out.argv += ["--max-model-len", str(STAND_IN_MAX_LEN)]
        elif flag == "--pipeline-parallel-size" and value is not None:
            out.adaptations.append(f"--pipeline-parallel-size {value} dropped (one CPU process)")
        elif flag == "--host" and is_server and value is not None:
            saw_host = True
            out.adaptations.append(f"--host {value} -> {pod_ip} (the pod IP on loopback)")
            out.argv += ["--host", pod_ip]
        elif inline is not None:
            out.argv.append(f"{flag}={local(inline)}")
        else:
            out.argv.append(local(rest[i]))
            consumed = 1
        i += consumed
    if is_server and not saw_host:
        out.adaptations.append(f"--host {pod_ip} added (the pod IP on loopback)")
        out.argv += ["--host", pod_ip]
    if cached:
        out.adaptations.insert(
            0, f"{cached[0]}: the tiny stand-in model the weights fetch put in the node's cache"
        )
    elif out.uses_stand_in_model and module != FETCH_MODULE:
        out.adaptations.insert(
            0, f"{BAKED_WEIGHTS} -> a tiny local model (stand-in for the preset's weights)"
        )
    return out


def _stand_in_fetch(
    args: Sequence[str], *, python: str, mounts: MountMap, stand_in_model: Callable[[], str]
) -> Translation:
    """The fetch's argv -> a copy of the stand-in model into the folder it would fill."""
    repo, revision = _flag_value(args, "--repo"), _flag_value(args, "--revision")
    cache = _flag_value(args, "--cache-dir") or MODEL_CACHE
    if not repo or not revision:
        raise ValueError("the weights fetch names no --repo and --revision")
    target = f"{cache.rstrip('/')}/{repo.replace('/', '--')}@{revision}"
    return Translation(
        argv=[python, "-c", _COPY_STAND_IN, stand_in_model(), mounts.translate(target)],
        adaptations=[
            f"fetch of {repo}@{revision} -> the tiny stand-in model copied into {target} "
            "(this stack has no hub to fetch from)"
        ],
        uses_stand_in_model=True,
    )
