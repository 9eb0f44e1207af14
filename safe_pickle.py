"""Reading pickles without running code: the one home of the restricted unpickler.

A pickle is a small program: besides building lists, dicts, numbers and strings, it can name any
global of any module (`GLOBAL os system`) and call it with arguments (`REDUCE`), which is how a
malicious file runs code as it is loaded. The `RestrictedUnpickler` here never imports a module
named in a file and calls only the few constructors it is given (`allowed`); every other global
becomes an inert class reference (`InertClass`: its module and name, nothing imported), and an
object the pickle builds from such a class (`NEWOBJ` + `BUILD`, how every pickled Python object is
written) becomes an `InertObject` that only records its arguments and state. What a pickle asks for
beyond that is refused with `PickleRefused` naming it: a call of anything not named like a class
(`os.system(...)`, `eval(...)`), and any global of the modules that run programs, import or open
files (CODE_MODULES).

Two readers use it: split files (splits.py: lists of ints, NumPy arrays allowed) and torch
checkpoints (`load_torch_file`: both torch.save formats, the zip archive of PyTorch >= 1.6 and the
legacy one, their storages read by `persistent_load`). `module_state` turns a whole pickled
nn.Module (the MANIQA PIPAL22 release is a pickled `DataParallel(MANIQA)`) into its state_dict,
from the records alone.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np
import torch

# Modules whose globals a data file never needs and an attack uses (run programs, import, open files, eval).
CODE_MODULES = frozenset({"builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "shutil", "socket",
                          "importlib", "runpy", "pickle", "_pickle", "marshal", "ctypes", "code", "codeop", "pty",
                          "types", "io", "pathlib", "webbrowser", "multiprocessing", "signal", "threading",
                          "functools", "operator", "inspect", "platform", "tempfile", "glob", "zipimport"})
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER of the pre-1.6 format
LEGACY_PROTOCOL = 1001
ZIP_SIGNATURE = b"PK\x03\x04"


class PickleRefused(pickle.UnpicklingError):
    """A pickle that asks for something a data file has no need of (a call, a code module)."""


class InertClass(type):
    """The record of a global named by a pickle (`module`, `name`), made here: nothing is imported.

    Instances are `InertObject`s. Building one the way pickle builds objects (NEWOBJ, then BUILD)
    is allowed; calling it (REDUCE) is allowed only for a name written like a class (CapWords, e.g.
    an Enum member `Format('NCHW')`), and records the arguments without calling anything."""

    def __call__(cls, *args, **kwargs):
        if not cls.inert_name[:1].isupper():
            raise PickleRefused(f"the pickle calls {cls.inert_module}.{cls.inert_name}(...), a function (a data "
                                "file only builds objects)")
        return cls.__new__(cls, *args, **kwargs)

    def __repr__(cls) -> str:
        return f"<inert class {cls.inert_module}.{cls.inert_name}>"


class InertObject:
    """An object a pickle built from an `InertClass`: its `args` (NEWOBJ/REDUCE), its `state` (BUILD,
    usually the object's __dict__) and, for list- or dict-like classes, its `items`. No method of
    the named class ever runs."""

    inert_module = inert_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    @property
    def qualified_name(self) -> str:
        return f"{self.inert_module}.{self.inert_name}"

    def attributes(self) -> dict:
        """The BUILD state as a dict of attributes ({} when there is none or it is not a dict)."""
        state = self.state[0] if isinstance(self.state, tuple) and len(self.state) == 2 else self.state
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def inert_class(module: str, name: str) -> InertClass:
    return InertClass(name, (InertObject,), {"inert_module": module, "inert_name": name})


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor (objects of protocols 0 and 1), for inert classes only."""
    if not isinstance(cls, InertClass):
        raise PickleRefused(f"the pickle reconstructs {cls!r} through copyreg")
    return cls.__new__(cls)


# NumPy's constructors of arrays, scalars and dtypes: data only (a split saved from NumPy, a metadata scalar).
NUMPY_CONSTRUCTORS: dict[tuple[str, str], Callable] = {
    (module, name): getattr(np, name) if module == "numpy" else getattr(np._core.multiarray, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
    for name in (("ndarray", "dtype") if module == "numpy" else ("_reconstruct", "scalar"))}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that runs no code from the file (see the module docstring).

    allowed: (module, name) -> the object to use for that global (constructors of data); inert: other
    globals become InertClass records (else they are refused); persistent: the persistent_load of
    the file format (torch storages), None when the pickle must have no persistent ids.
    """

    def __init__(self, file, allowed: Mapping[tuple[str, str], Any], inert: bool = True,
                 persistent: Callable[[Any], Any] | None = None):
        super().__init__(file)
        self.allowed, self.inert, self.persistent = allowed, inert, persistent
        self._classes: dict[tuple[str, str], InertClass] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[module, name]
        if module.split(".")[0] in CODE_MODULES or not self.inert:
            raise PickleRefused(f"the pickle asks for {module}.{name}, which a data file has no need of")
        if (module, name) not in self._classes:
            self._classes[module, name] = inert_class(module, name)
        return self._classes[module, name]

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent is None:
            raise PickleRefused("the pickle refers to external objects (persistent ids)")
        return self.persistent(pid)


def load_data(data: bytes, allowed: Mapping[tuple[str, str], Any] = NUMPY_CONSTRUCTORS) -> Any:
    """Unpickle plain data: containers, numbers, strings and the `allowed` constructors (default
    NumPy's); any other global is refused (PickleRefused)."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, inert=False).load()


# ---------------------------------------------------------------------------------------------
# torch.save files


class Storage:
    """A tensor storage of the file: its bytes (an untyped storage) and the dtype of its elements."""

    def __init__(self, data: torch.UntypedStorage, dtype: torch.dtype):
        self.data, self.dtype = data, dtype


class StorageType:
    """The legacy storage class a pickle names (torch.FloatStorage, ...), reduced to its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: Storage, offset: int, size: tuple, stride: tuple, *rest: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor(_v2): the tensor viewing `storage`; requires_grad, hooks and
    metadata (the rest) are dropped."""
    if not isinstance(storage, Storage):
        raise PickleRefused(f"a tensor is rebuilt from {storage!r}, not from a storage of the file")
    return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, *rest: Any) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the parameter's tensor."""
    if not isinstance(data, torch.Tensor):
        raise PickleRefused(f"a parameter is rebuilt from {data!r}, not from a tensor")
    return data


def _device(*args: Any) -> torch.device:
    return torch.device(*args)


# The legacy storage classes a torch pickle names, and their element types.
STORAGE_TYPES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
                 "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                 "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                 "BoolStorage": torch.bool, "ComplexDoubleStorage": torch.complex128,
                 "ComplexFloatStorage": torch.complex64}
DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in STORAGE_TYPES.values()}
TORCH_CONSTRUCTORS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor, ("copy_reg", "_reconstructor"): _reconstructor,
    ("torch", "device"): _device, ("torch", "Size"): torch.Size,
    ("torch", "UntypedStorage"): StorageType(torch.uint8),
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_TYPES.items()},
    **{("torch", name): dtype for name, dtype in DTYPES.items()},
    **NUMPY_CONSTRUCTORS,
}


def _storage_dtype(storage_type: Any) -> torch.dtype:
    if not isinstance(storage_type, StorageType):
        raise PickleRefused(f"a storage of unknown type {storage_type!r}")
    return storage_type.dtype


def _load_zip(path: str) -> Any:
    """The object of a torch.save zip archive: `{root}/data.pkl`, its storages in `{root}/data/{key}`."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise PickleRefused("a zip file that is not a torch.save archive (no single */data.pkl)")
        root = pickles[0].rsplit("/", 1)[0]
        if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").decode() != sys.byteorder:
            raise PickleRefused(f"the archive stores {archive.read(f'{root}/byteorder').decode()}-endian tensors; "
                                f"this machine is {sys.byteorder}-endian")
        storages: dict[str, Storage] = {}

        def persistent(pid: Any) -> Storage:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise PickleRefused(f"unknown persistent id {pid!r}")
            _, storage_type, key, _, numel = pid
            dtype = _storage_dtype(storage_type)
            if key not in storages:
                info = archive.getinfo(f"{root}/data/{key}")
                buffer = bytearray(info.file_size)
                with archive.open(info) as record:
                    record.readinto(buffer)
                storages[key] = Storage(torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()
                                        if buffer else torch.UntypedStorage(0), dtype)
            return storages[key]

        with archive.open(pickles[0]) as handle:
            return RestrictedUnpickler(io.BytesIO(handle.read()), TORCH_CONSTRUCTORS, persistent=persistent).load()


def _load_legacy(handle) -> Any:
    """The object of a legacy torch.save file: magic number, protocol, system info, the object's
    pickle, the list of storage keys, then each storage as (int64 element count, bytes)."""
    if load_data_from(handle) != LEGACY_MAGIC:
        raise PickleRefused("not a torch.save file (no torch magic number)")
    if load_data_from(handle) != LEGACY_PROTOCOL:
        raise PickleRefused("a torch.save file of an unknown legacy protocol")
    info = load_data_from(handle)
    if isinstance(info, dict) and info.get("little_endian") is False:
        raise PickleRefused("the file stores big-endian tensors")
    storages: dict[str, tuple[torch.Tensor, torch.dtype]] = {}
    views: dict[str, Storage] = {}

    def persistent(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "module":  # a class's source saved beside it
            return pid[1]
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise PickleRefused(f"unknown persistent id {pid!r}")
        _, storage_type, key, _, numel, view = pid
        dtype = _storage_dtype(storage_type)
        size = torch.empty(0, dtype=dtype).element_size()
        if key not in storages:
            storages[key] = (torch.empty(numel * size, dtype=torch.uint8), dtype)
        if view is None:
            return Storage(storages[key][0].untyped_storage(), dtype)
        view_key, offset, view_numel = view
        if view_key not in views:
            views[view_key] = Storage(storages[key][0][offset * size:(offset + view_numel) * size].untyped_storage(),
                                      dtype)
        return views[view_key]

    result = RestrictedUnpickler(handle, TORCH_CONSTRUCTORS, persistent=persistent).load()
    for key in load_data_from(handle):
        buffer, dtype = storages[key]
        (count,) = struct.unpack("<q", handle.read(8))
        raw = bytearray(handle.read(len(buffer)))
        if count * torch.empty(0, dtype=dtype).element_size() != len(buffer) or len(raw) != len(buffer):
            raise PickleRefused(f"storage {key} of the file is truncated or of the wrong size")
        if raw:
            buffer.copy_(torch.frombuffer(raw, dtype=torch.uint8))
    return result


def load_data_from(handle) -> Any:
    """One plain-data pickle read from the open file `handle`."""
    return RestrictedUnpickler(handle, {}, inert=False).load()


def load_torch_file(path: str | os.PathLike) -> Any:
    """The object of a torch.save file (zip or legacy format), read without running code: tensors,
    containers and numbers are real, other objects InertObject records. PickleRefused (see
    RestrictedUnpickler) for a file that asks for anything else; pickle.UnpicklingError, EOFError
    or OSError for a damaged one."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        if handle.read(4) == ZIP_SIGNATURE:
            return _load_zip(path)
        handle.seek(0)
        return _load_legacy(handle)


def module_state(record: Any, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """The state_dict of a whole pickled nn.Module, from its InertObject record: in each module, its
    `_parameters`, then its persistent `_buffers`, then its `_modules` in order, with dotted names,
    as nn.Module.state_dict orders them. ValueError when `record` holds no module."""
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    attributes = record.attributes() if isinstance(record, InertObject) else {}
    if "_parameters" not in attributes or "_modules" not in attributes:
        raise ValueError(f"{record!r} is not a pickled torch module")
    skipped = attributes.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (attributes.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor) and name not in skipped:
                state[prefix + name] = tensor
    for name, child in (attributes.get("_modules") or {}).items():
        if child is not None:
            state.update(module_state(child, f"{prefix}{name}."))
    return state


def module_attributes(record: InertObject, prefix: str = "") -> dict[str, Any]:
    """The plain attributes (numbers, strings, booleans) of a pickled module and its submodules, by
    dotted name, e.g. {'swintransformer1.scale': 0.13, ...}."""
    attributes = record.attributes()
    found = {prefix + name: value for name, value in attributes.items()
             if not name.startswith("_") and isinstance(value, (int, float, str, bool))}
    for name, child in (attributes.get("_modules") or {}).items():
        if isinstance(child, InertObject):
            found.update(module_attributes(child, f"{prefix}{name}."))
    return found
