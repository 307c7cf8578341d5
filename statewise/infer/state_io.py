"""Saving, loading and checking one sequence's recurrent state (served state).

A model's state is what ``model.init_state(batch)`` returns and ``model.step`` passes on:
a list with one entry per block, each a tensor or a tuple/list/dict of tensors, batch
first. One sequence's state (batch 1) is stored as safetensors bytes::

    tensors   one per leaf, named by its path in the tree ("0", "1.h", "0.0", "1.kv")
    metadata  format   "statewise.state"
              version  "1"
              fingerprint  model_fingerprint(model): the model that made the state
              structure    JSON of the tree: {"list": [...]}, {"tuple": [...]},
                           {"dict": [[key, ...], ...]}, a leaf is its tensor's name
              tokens   how many tokens the state has read (absent when not given)

Bytes from a client or a file are checked before use (``state_from_bytes``): a valid
safetensors file of this format and version, made by the same model (the fingerprint of
its config and weights), of the tree structure of ``model.init_state(1)`` with every
leaf of its shape and dtype, floating leaves finite (-inf only where the layer allows it,
``SequenceMixer.state_neg_inf``), integer leaves (counters) non-negative. Anything else is
an ``ArgumentError`` naming what is wrong (a ``CheckpointError`` naming the file when read
from one). The checks reuse the layers' own state checks (``statewise.layers.base``).

``model_fingerprint`` hashes every weight (about 45 ms for a 12.6 M-parameter float32
model, 50 MB, on this machine). A server computes it once per loaded model and passes
it as ``fingerprint=`` to the functions below, which otherwise recompute it on each call.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from statewise.errors import ArgumentError, ArgumentTypeError, CheckpointError
from statewise.layers.base import _fit_tree
from statewise.ops.tree import State, tree_leaves, tree_map

FORMAT = "statewise.state"
VERSION = 1
FINGERPRINT_CHARS = 32  # hex digits kept of the sha256 (128 bits)
# room for the safetensors header and the metadata beyond the tensors' bytes, when the
# size of bytes or a file is checked before it is parsed (see _max_bytes)
_HEADER_ALLOWANCE = 64 * 1024
_HEADER_PER_LEAF = 512


@dataclasses.dataclass(frozen=True)
class StateMeta:
    """What a saved state says about itself besides its tensors."""

    fingerprint: str  # model_fingerprint of the model that made it
    tokens: int | None  # tokens the state has read, when the writer said
    version: int  # format version
    nbytes: int  # size of the serialized state


# ----------------------------------------------------------------------------- fingerprint
def model_fingerprint(model: nn.Module) -> str:
    """A short hex digest (the first 32 hex digits of a sha256) of the model's class, its
    config (``dataclasses.asdict(model.config)`` as sorted JSON) and its weights: every
    tensor of ``state_dict()`` in the state dict's order, each hashed with its name, dtype
    and shape and then its raw bytes. A tensor that is the same storage as an earlier one
    (tied embeddings) is hashed as a reference to that name. The same model always gives
    the same string; changing one weight or one config value changes it."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ArgumentTypeError(
            f"model must have a dataclass .config (a ModelConfig) to be fingerprinted; "
            f"{type(model).__name__} has {type(config).__name__}"
        )
    h = hashlib.sha256()
    h.update(f"{FORMAT} fingerprint 1\n{type(model).__name__}\n".encode())
    h.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=repr).encode())
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        t = tensor.detach()
        head = f"\n{name}\0{t.dtype}\0{tuple(t.shape)}\0"
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if t.numel() and key in seen:
            h.update(f"{head}same as {seen[key]}".encode())
            continue
        seen[key] = name
        h.update(head.encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()[:FINGERPRINT_CHARS]


# ----------------------------------------------------------------------------- to bytes
def state_to_bytes(
    state: list[State],
    model: nn.Module,
    row: int | None = None,
    tokens: int | None = None,
    fingerprint: str | None = None,
) -> bytes:
    """One sequence's state as safetensors bytes (the format in this module's docstring).

    ``state`` is a batch-1 state of ``model``, or a batched one with ``row`` naming the
    sequence to save. The state is checked as ``state_from_bytes`` would check it, so
    what is written can be read back. ``tokens``: how many tokens the state has read, if
    known. ``fingerprint``: ``model_fingerprint(model)`` when the caller has it cached."""
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        raise ArgumentTypeError(f"tokens must be an int or None, got {type(tokens).__name__}")
    if tokens is not None and tokens < 0:
        raise ArgumentError(f"tokens must be >= 0, got {tokens}")
    try:
        leaves = tree_leaves(state)
    except TypeError as err:
        raise ArgumentTypeError(f"state: {err}") from None
    if not leaves:
        raise ArgumentError("state holds no tensors")
    if any(t.dim() == 0 for t in leaves):
        raise ArgumentError("state has a 0-dimensional tensor: every leaf is batch-first")
    batch = leaves[0].shape[0]
    if any(t.shape[0] != batch for t in leaves):
        sizes = sorted({t.shape[0] for t in leaves})
        raise ArgumentError(f"state's leaves have different batch sizes {sizes}")
    if row is None:
        if batch != 1:
            raise ArgumentError(
                f"state holds {batch} sequences: pass row= to choose the one to save"
            )
        row = 0
    elif isinstance(row, bool) or not isinstance(row, int):
        raise ArgumentTypeError(f"row must be an int or None, got {type(row).__name__}")
    elif not 0 <= row < batch:
        raise ArgumentError(f"row must be in [0, {batch}), got {row}")
    one = tree_map(lambda t: t.detach()[row : row + 1].to("cpu").contiguous().clone(), state)
    one = _fit_model(one, model, torch.device("cpu"))
    tensors: dict[str, torch.Tensor] = {}
    structure = _describe(one, "", tensors)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "fingerprint": fingerprint if fingerprint is not None else model_fingerprint(model),
        "structure": json.dumps(structure, separators=(",", ":")),
    }
    if tokens is not None:
        metadata["tokens"] = str(tokens)
    return safetensors.torch.save(tensors, metadata=metadata)


def _describe(tree: State, path: str, out: dict[str, torch.Tensor]) -> Any:
    """The JSON structure of ``tree``; its leaves go into ``out`` under their path."""
    if isinstance(tree, torch.Tensor):
        name = path or "state"
        if name in out:
            raise ArgumentError(f"state: two leaves would be saved under the name {name!r}")
        out[name] = tree
        return name
    sep = "." if path else ""
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, str):
                raise ArgumentTypeError(f"state: dict keys must be str, got {k!r}")
        return {"dict": [[k, _describe(v, f"{path}{sep}{k}", out)] for k, v in tree.items()]}
    kind = "tuple" if isinstance(tree, tuple) else "list"
    return {kind: [_describe(v, f"{path}{sep}{i}", out) for i, v in enumerate(tree)]}


# ----------------------------------------------------------------------------- from bytes
def state_from_bytes(
    data: bytes | bytearray | memoryview,
    model: nn.Module,
    fingerprint: str | None = None,
) -> tuple[list[State], StateMeta]:
    """Parse and check bytes written by ``state_to_bytes``; return the batch-1 state on
    the model's device and what the bytes say about it (``StateMeta``).

    Refused with an ``ArgumentError`` naming the problem: bytes that are not a safetensors
    file of this format, another format version, a state made by another model (its
    fingerprint differs from ``fingerprint``, by default ``model_fingerprint(model)``), a
    tree structure or a leaf shape or dtype other than ``model.init_state(1)``'s, NaN or
    inf in a floating leaf (-inf is allowed under the layer's ``state_neg_inf`` keys), a
    negative integer leaf."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArgumentTypeError(f"state data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    template = _template(model)
    limit = _max_bytes(template)
    if len(data) > limit:
        raise ArgumentError(
            f"not a statewise state of this model: {len(data):,} bytes, more than the "
            f"{limit:,} its state can take"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # SafetensorError, and whatever a garbled header raises
        raise ArgumentError(
            f"not a statewise state: not a safetensors file ({type(err).__name__}: {err})"
        ) from None
    (header_len,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ArgumentError(
            f"not a statewise state: a safetensors file whose metadata format is "
            f"{metadata.get('format')!r}, expected {FORMAT!r}"
        )
    if metadata.get("version") != str(VERSION):
        raise ArgumentError(
            f"statewise state format version {metadata.get('version')!r} cannot be read: "
            f"this statewise reads version {VERSION}"
        )
    expected = fingerprint if fingerprint is not None else model_fingerprint(model)
    got = metadata.get("fingerprint")
    if got != expected:
        raise ArgumentError(
            f"the state was made by another model: its model fingerprint is {got!r}, this "
            f"model's is {expected!r} (a state only continues the model, config and "
            "weights, that wrote it)"
        )
    tokens = _parse_tokens(metadata.get("tokens"))
    try:
        structure = json.loads(metadata.get("structure", ""))
    except (ValueError, RecursionError):
        raise ArgumentError("corrupt statewise state: its structure is not JSON") from None
    unused = set(tensors)
    state = _rebuild(structure, tensors, unused, depth=0)
    if unused:
        raise ArgumentError(
            f"corrupt statewise state: tensors {sorted(unused)} are not in its structure"
        )
    state = _fit_model(state, model, torch.device("cpu"), template)
    device = _device(model)
    if device.type != "cpu":
        state = tree_map(lambda t: t.to(device), state)
    meta = StateMeta(fingerprint=got, tokens=tokens, version=VERSION, nbytes=len(data))
    return state, meta


def _parse_tokens(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isdigit() or len(value) > 20:
        raise ArgumentError(f"corrupt statewise state: tokens must be a count >= 0, got {value!r}")
    return int(value)


def _rebuild(spec: object, tensors: dict[str, torch.Tensor], unused: set[str], depth: int) -> State:
    """The tree described by ``spec`` with its leaves taken from ``tensors``."""
    if depth > 32:
        raise ArgumentError("corrupt statewise state: its structure nests too deeply")
    if isinstance(spec, str):
        if spec not in unused:
            what = "used twice" if spec in tensors else "missing"
            raise ArgumentError(f"corrupt statewise state: tensor {spec!r} is {what}")
        unused.discard(spec)
        return tensors[spec]
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, items),) = spec.items()
        if kind in ("list", "tuple") and isinstance(items, list):
            built = [_rebuild(s, tensors, unused, depth + 1) for s in items]
            return built if kind == "list" else tuple(built)
        if (
            kind == "dict"
            and isinstance(items, list)
            and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in items)
            and len({p[0] for p in items}) == len(items)
        ):
            return {k: _rebuild(s, tensors, unused, depth + 1) for k, s in items}
    raise ArgumentError(f"corrupt statewise state: bad structure entry {str(spec)[:80]!r}")


# ----------------------------------------------------------------------------- checks
def _template(model: nn.Module) -> list[State]:
    """``model.init_state(1)`` on the meta device: shapes and dtypes, no memory."""
    if not isinstance(model, nn.Module) or not callable(getattr(model, "init_state", None)):
        raise ArgumentTypeError(
            f"model must be a statewise model with init_state, got {type(model).__name__}"
        )
    return model.init_state(1, device=torch.device("meta"))


def _neg_inf_keys(model: nn.Module, n_blocks: int) -> list[tuple[str, ...]]:
    """Per block, the state keys where the block's layer allows -inf."""
    blocks = getattr(getattr(model, "backbone", None), "blocks", None)
    if blocks is None or len(blocks) != n_blocks:
        return [()] * n_blocks
    return [tuple(getattr(b.mixer, "state_neg_inf", ())) for b in blocks]


def _fit_model(
    state: object, model: nn.Module, device: torch.device, template: list[State] | None = None
) -> list[State]:
    """``state`` checked leaf by leaf against the model's batch-1 state (the layers' own
    ``_fit_tree``), and its containers of the same kinds (a tuple where a tuple is)."""
    template = _template(model) if template is None else template
    if not isinstance(state, (list, tuple)):
        raise ArgumentTypeError(
            f"state must be a list with one entry per block, got {type(state).__name__}"
        )
    if len(state) != len(template):
        raise ArgumentError(
            f"the state does not fit this model: {len(state)} blocks, the model has {len(template)}"
        )
    fitted = []
    for i, (s, t, keys) in enumerate(zip(state, template, _neg_inf_keys(model, len(template)))):
        try:
            fitted.append(_fit_tree(s, t, device, f"state[{i}]", keys))
        except (TypeError, ValueError) as err:
            raise ArgumentError(f"the state does not fit this model: {err}") from None
        _same_kinds(s, t, f"state[{i}]")
    return fitted


def check_state(state: object, model: nn.Module) -> list[State]:
    """A batch-1 state handed in from outside (a client, a session) checked against the
    model's: structure, shapes, dtypes, finite values, counters (ArgumentError naming the
    leaf otherwise); returned on the model's device."""
    return _fit_model(state, model, _device(model))


def _same_kinds(state: State, template: State, where: str) -> None:
    """A list where the template has a tuple (which ``_fit_tree`` lets pass) is refused:
    a saved state rebuilds the exact nesting."""
    if isinstance(template, torch.Tensor):
        return
    if type(state) is not type(template):
        raise ArgumentError(
            f"the state does not fit this model: {where} is a {type(state).__name__}, "
            f"expected a {type(template).__name__}"
        )
    if isinstance(template, dict):
        for k in template:
            _same_kinds(state[k], template[k], f"{where}[{k!r}]")
    else:
        for i, (s, t) in enumerate(zip(state, template)):
            _same_kinds(s, t, f"{where}[{i}]")


def _max_bytes(template: list[State]) -> int:
    """The most bytes a serialized batch-1 state of this template can take."""
    leaves = tree_leaves(template)
    tensor_bytes = sum(t.numel() * t.element_size() for t in leaves)
    return tensor_bytes + _HEADER_ALLOWANCE + _HEADER_PER_LEAF * len(leaves)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- base64
def encode_state_b64(
    state: list[State],
    model: nn.Module,
    row: int | None = None,
    tokens: int | None = None,
    fingerprint: str | None = None,
) -> str:
    """``state_to_bytes(...)`` as standard base64 text (for JSON requests and replies)."""
    data = state_to_bytes(state, model, row=row, tokens=tokens, fingerprint=fingerprint)
    return base64.b64encode(data).decode("ascii")


def decode_state_b64(
    text: str | bytes, model: nn.Module, fingerprint: str | None = None
) -> tuple[list[State], StateMeta]:
    """The state and meta in base64 ``text`` (from ``encode_state_b64``), checked as
    ``state_from_bytes`` checks them; text that is not valid base64 is an ArgumentError."""
    if not isinstance(text, (str, bytes)):
        raise ArgumentTypeError(f"a base64 state must be a str, got {type(text).__name__}")
    limit = _max_bytes(_template(model))
    if len(text) > (limit + 2) // 3 * 4 + 4:
        raise ArgumentError(
            f"not a statewise state of this model: {len(text):,} base64 characters, more "
            f"than its state can take"
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ArgumentError(f"the state is not valid base64: {err}") from None
    return state_from_bytes(data, model, fingerprint=fingerprint)


# ----------------------------------------------------------------------------- files
def save_state_file(
    path: str | os.PathLike[str],
    state: list[State],
    model: nn.Module,
    row: int | None = None,
    tokens: int | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Write ``state_to_bytes(...)`` to ``path`` atomically: into a temporary file in the
    same directory, flushed to disk, then ``os.replace``d over ``path``. A failure at any
    point leaves an existing ``path`` as it was and no temporary file. Returns the path."""
    path = _checked_path(path)
    data = state_to_bytes(state, model, row=row, tokens=tokens, fingerprint=fingerprint)
    if not path.parent.is_dir():
        raise CheckpointError(
            f"{path}: cannot save a state there: {path.parent} is not a directory"
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_state_file(
    path: str | os.PathLike[str], model: nn.Module, fingerprint: str | None = None
) -> tuple[list[State], StateMeta]:
    """The state saved in ``path`` by ``save_state_file``, checked as ``state_from_bytes``
    checks it; the file is only read. A missing file or a state the model cannot use is a
    ``CheckpointError`` naming the file."""
    path = _checked_path(path)
    limit = _max_bytes(_template(model))
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, not a saved state")
        if size > limit:
            raise CheckpointError(
                f"{path}: not a statewise state of this model: {size:,} bytes, more than "
                f"the {limit:,} its state can take"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no saved state there (file not found)") from None
    try:
        return state_from_bytes(data, model, fingerprint=fingerprint)
    except ArgumentError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _checked_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)
