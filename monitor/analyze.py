"""Metrics of saved embeddings (``spherewatch analyze``): ``.pt``, ``.npy``, ``.npz`` and ``.safetensors``.

Files are read without executing anything: ``torch.load(weights_only=True)``, ``numpy.load(allow_pickle=False)``.
Up to ``in_memory_rows`` rows the library's metric functions run on the whole matrix. Larger files are streamed in
chunks of ``chunk_rows`` rows: every metric except uniformity is then computed exactly from streamed sufficient
statistics (Gram matrix, moments, sums); uniformity is the pooled within-chunk estimate, reported with its standard
error.
"""
from __future__ import annotations

import functools
import math
import os
import zipfile
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

import spherewatch.metrics as M
from spherewatch.metrics import gram64, normalize_rows, pair_kernel_sum
from spherewatch.metrics.effective_rank import effective_rank_from_gram
from spherewatch.metrics.spectrum import spectrum_from_moments

__all__ = ["analyze", "open_embeddings", "EmbeddingFile", "MAX_NPZ_MEMBER_BYTES"]

SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors")
#: Largest array read from a ``.npz`` member (uncompressed bytes, from the zip directory and the array's own header,
#: both checked before anything is decompressed): a small compressed file can expand to any size. ``.npz`` members
#: are read whole into memory; save larger matrices with ``numpy.save`` (``.npy`` is memory-mapped, no limit) or pass
#: ``max_npz_bytes=`` / ``--max-npz-bytes``.
MAX_NPZ_MEMBER_BYTES = 2 << 30


class EmbeddingFile:
    """A 2-D float matrix on disk, read in row chunks."""

    def __init__(self, path: str, rows: int, cols: int, reader: Callable[[int, int], torch.Tensor], what: str) -> None:
        self.path, self.rows, self.cols, self._reader, self.what = path, rows, cols, reader, what

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self._reader(start, stop)

    def chunks(self, chunk_rows: int) -> Iterator[torch.Tensor]:
        for a in range(0, self.rows, chunk_rows):
            yield self.read(a, min(a + chunk_rows, self.rows))


def _pick(mapping: Dict[str, Any], key: Optional[str], path: str, is_array: Callable[[Any], bool]):
    names = [k for k, v in mapping.items() if is_array(v)]
    if key is not None:
        if key not in mapping:
            raise ValueError(f"{path!r} has no array named {key!r}; it holds: {sorted(mapping)}. Pass one with --key.")
        return key, mapping[key]
    if len(names) == 1:
        return names[0], mapping[names[0]]
    for preferred in ("embeddings", "z", "features"):
        if preferred in names:
            return preferred, mapping[preferred]
    raise ValueError(f"{path!r} holds several arrays {sorted(names)}; choose one with --key.")


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npz_member(path: str, key: Optional[str], max_bytes: int) -> Tuple[str, np.ndarray]:
    """The one member of a ``.npz`` file that ``key`` selects (see :func:`_pick`), read only once its uncompressed
    size is known to be at most ``max_bytes``; no other member is decompressed."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"Cannot read {path!r} as a .npz (zip) file: {err}") from err
    with zf:
        members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
        name, info = _pick(members, key, path, lambda v: True)
        fix = (f"save it with numpy.save as .npy (memory-mapped, no limit) or raise the limit (max_npz_bytes= / "
               f"--max-npz-bytes, now {max_bytes} bytes)")
        if info.file_size > max_bytes:
            raise ValueError(f"Refusing to load {path!r} [{name}]: the member is {info.file_size} bytes uncompressed "
                             f"(from {info.compress_size} compressed); {fix}.")
        with zf.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = _NPY_HEADER_READERS.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, _, dtype = read_header(fh)
            except ValueError as err:
                raise ValueError(f"{path!r} [{name}] is not a numpy array: {err}") from err
            if dtype.hasobject:
                raise ValueError(f"Refusing to load {path!r} [{name}]: it holds pickled Python objects (numpy "
                                 "allow_pickle=False). Save a plain float array with numpy.savez.")
            size = math.prod(shape) * dtype.itemsize
            if size > max_bytes:
                raise ValueError(f"Refusing to load {path!r} [{name}]: its header declares shape {tuple(shape)} "
                                 f"{dtype} ({size} bytes); {fix}.")
        with zf.open(info) as fh:
            return name, np.lib.format.read_array(fh, allow_pickle=False)


def _check_matrix(shape: Tuple[int, ...], dtype: Any, path: str, name: str) -> None:
    if len(shape) != 2:
        raise ValueError(
            f"Expected a 2-D embedding matrix (N, D) in {path!r}{' [' + name + ']' if name else ''}, got shape "
            f"{tuple(shape)}. Pool or reshape it before saving (e.g. x.mean(1) for token embeddings)."
        )
    kind = str(dtype)
    if not any(s in kind for s in ("float", "half", "bfloat")):
        raise TypeError(f"Expected floating embeddings in {path!r}, got dtype {kind}.")


def open_embeddings(path: str, key: Optional[str] = None, *,
                    max_npz_bytes: int = MAX_NPZ_MEMBER_BYTES) -> EmbeddingFile:
    """Open an embedding matrix for chunked reading. Raises a clear error for a missing file, an unsupported
    suffix, a pickled object, a wrong shape or a ``.npz`` member larger than ``max_npz_bytes`` uncompressed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such embeddings file: {path!r}.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            if "weights_only" in str(err) or "Unsupported global" in str(err) or "pickle" in str(err).lower():
                raise ValueError(
                    f"Refusing to load {path!r}: it holds pickled Python objects, not only tensors "
                    "(torch.load(weights_only=True) rejected it). Save a plain tensor with torch.save(z, path)."
                ) from err
            raise ValueError(f"Cannot read {path!r} as a torch file: {err}") from err
        name = ""
        if isinstance(obj, dict):
            name, obj = _pick(obj, key, path, lambda v: isinstance(v, torch.Tensor))
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"Expected a tensor (or a dict of tensors) in {path!r}, got {type(obj).__name__}.")
        _check_matrix(tuple(obj.shape), obj.dtype, path, name)
        t = obj
        return EmbeddingFile(path, t.shape[0], t.shape[1], lambda a, b: t[a:b].float(), f"torch {name}".strip())
    if suffix in (".npy", ".npz"):
        name = ""
        if suffix == ".npz":
            name, data = _npz_member(path, key, max_npz_bytes)
        else:
            try:
                data = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise ValueError(
                    f"Refusing to load {path!r}: it holds pickled Python objects (numpy allow_pickle=False). "
                    "Save a plain float array with numpy.save."
                ) from err
        _check_matrix(data.shape, data.dtype, path, name)
        arr = data
        return EmbeddingFile(
            path, arr.shape[0], arr.shape[1], lambda a, b: torch.from_numpy(np.array(arr[a:b], dtype=np.float32)),
            f"numpy {name}".strip(),
        )
    if suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("Reading .safetensors needs `safetensors`: pip install safetensors.") from err
        handle = safe_open(path, framework="pt")
        keys = list(handle.keys())
        name, _ = _pick({k: True for k in keys}, key, path, lambda v: True)
        sl = handle.get_slice(name)
        shape = tuple(sl.get_shape())
        _check_matrix(shape, sl.get_dtype().lower().replace("f", "float"), path, name)  # F32 -> float32
        return EmbeddingFile(path, shape[0], shape[1], lambda a, b: sl[a:b].float(), f"safetensors {name}")
    raise ValueError(f"Unsupported embeddings file {path!r}: use one of {', '.join(SUFFIXES)}.")


def _open_labels(path: str, rows: int, key: Optional[str] = None, *,
                 max_npz_bytes: int = MAX_NPZ_MEMBER_BYTES) -> torch.Tensor:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such labels file: {path!r}.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            _, obj = _pick(obj, key, path, lambda v: isinstance(v, torch.Tensor))
        labels = torch.as_tensor(obj)
    elif suffix == ".npz":
        labels = torch.from_numpy(_npz_member(path, key, max_npz_bytes)[1])
    elif suffix == ".npy":
        data = np.load(path, allow_pickle=False)
        labels = torch.from_numpy(np.asarray(data))
    else:
        raise ValueError(f"Unsupported labels file {path!r}: use .pt, .npy or .npz.")
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ValueError(f"Expected labels of shape ({rows},) in {path!r}, got {tuple(labels.shape)}.")
    return labels.long()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="rows", unit_scale=True, desc="analyze", leave=False)
    except ModuleNotFoundError:  # pragma: no cover - tqdm is in the [all] extra
        return None


def analyze(
    path: str,
    pos: Optional[str] = None,
    labels: Optional[str] = None,
    *,
    key: Optional[str] = None,
    t: float = 2.0,
    chunk_rows: int = 65536,
    in_memory_rows: int = 16384,
    progress: bool = False,
    max_npz_bytes: int = MAX_NPZ_MEMBER_BYTES,
) -> Dict[str, Any]:
    """Compute the metrics of a saved embedding matrix (and its paired view / labels). Returns a dict with
    ``file``, ``rows``, ``dim``, ``mode`` (``"exact"`` or ``"streamed"``) and ``metrics`` (name -> float).
    A ``.npz`` member larger than ``max_npz_bytes`` uncompressed is refused before it is decompressed."""
    emb = open_embeddings(path, key, max_npz_bytes=max_npz_bytes)
    pos_file = open_embeddings(pos, key, max_npz_bytes=max_npz_bytes) if pos else None
    if pos_file is not None and (pos_file.rows, pos_file.cols) != (emb.rows, emb.cols):
        raise ValueError(
            f"Expected --pos to match the embeddings' shape {(emb.rows, emb.cols)}, got {(pos_file.rows, pos_file.cols)}."
        )
    lab = _open_labels(labels, emb.rows, max_npz_bytes=max_npz_bytes) if labels else None
    if emb.rows < 2:
        raise ValueError(f"Expected at least 2 rows in {path!r}, got {emb.rows}.")
    bar = _progress(emb.rows, progress)
    out: Dict[str, float] = {}
    if emb.rows <= in_memory_rows:
        z = emb.read(0, emb.rows)
        out["uniformity"] = float(M.uniformity(z, t))
        out["effective_rank"] = float(M.effective_rank(z))
        out["effective_rank_centered"] = float(M.effective_rank(z, center=True))
        out["normalized_std"] = float(M.normalized_std(z))
        out["mean_cosine"] = float(M.mean_cosine(z))
        lam = M.spectrum(z)
        out["collapsed_dimensions"] = float(M.collapsed_dimensions(lam))
        fit = M.alpha_req(lam)
        out["alpha_req"], out["alpha_req_r2"] = float(fit.alpha), float(fit.r2)
        out["nonfinite_fraction"] = float(M.nonfinite_fraction(z))
        out.update({k: float(v) for k, v in M.norm_stats(z).items()})
        if pos_file is not None:
            zp = pos_file.read(0, emb.rows)
            out["alignment"] = float(M.alignment(z, zp))
            out["uniformity_pos"] = float(M.uniformity(zp, t))
            out["redundancy"] = float(M.redundancy(z, zp))
        if lab is not None:
            try:
                out["nc1"] = float(M.nc1(z, lab))
            except ValueError:
                pass
        if bar is not None:
            bar.update(emb.rows)
            bar.close()
        return {"file": path, "rows": emb.rows, "dim": emb.cols, "mode": "exact", "metrics": out}
    # ---- streamed: exact sufficient statistics; pooled uniformity
    d = emb.cols
    n = 0
    own = _moments(d)  # the normalised rows' centred moments (the Gram, the spectrum, the spread metrics)
    raw_sum = torch.zeros(d, dtype=torch.float64)
    nonfinite = 0
    norm_sum = norm_sq = 0.0
    norm_n = 0
    norm_min, norm_max = math.inf, -math.inf
    kern_sums, kern_pairs = [], []
    align_sum = 0.0
    pos_chunks = pos_file.chunks(chunk_rows) if pos_file is not None else None
    xy = _moments(d) if pos_file is not None else None  # the two views' raw co-moments (the cross-view redundancy)
    for chunk in emb.chunks(chunk_rows):
        m = chunk.shape[0]
        bad = ~torch.isfinite(chunk)
        nonfinite += int(bad.sum())
        norms = torch.linalg.vector_norm(chunk, dim=1)
        fin = torch.isfinite(norms)
        if fin.any():
            nf = norms[fin].double()
            norm_sum += float(nf.sum())
            norm_sq += float((nf * nf).sum())
            norm_n += int(fin.sum())
            norm_min, norm_max = min(norm_min, float(nf.min())), max(norm_max, float(nf.max()))
        zh = normalize_rows(chunk)
        zd = chunk.double()
        # centred moments with Chan's merge, in fp64 (subtracting n * mean mean^T from a raw Gram at the end
        # cancels digits near collapse); the raw Gram is rebuilt from them without cancellation
        _merge_cross_moments(own, torch.nn.functional.normalize(zd, dim=1), None, n)
        raw_sum += zd.sum(0)
        if m >= 2:
            kern_sums.append(float(pair_kernel_sum(zh, t)))
            kern_pairs.append(m * (m - 1) / 2)
        if pos_chunks is not None:
            pos_chunk = next(pos_chunks)
            zp = normalize_rows(pos_chunk)
            align_sum += float((zh - zp).pow(2).sum(1).double().sum())
            _merge_cross_moments(xy, zd, pos_chunk.double(), n)
        n += m
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    mean, m2 = own["mx"], own["cxy"]
    gram = m2 + n * torch.outer(mean, mean)
    lam = spectrum_from_moments(n, mean, m2)
    means = np.array(kern_sums) / np.array(kern_pairs)
    kmean = float(np.sum(kern_sums) / np.sum(kern_pairs))
    out["uniformity"] = math.log(kmean)
    out["uniformity_stderr"] = float(np.std(means, ddof=1) / math.sqrt(len(means)) / kmean) if len(means) > 1 else 0.0
    out["effective_rank"] = float(effective_rank_from_gram(gram))
    out["effective_rank_centered"] = float(effective_rank_from_gram(m2))
    var = own["cxx"] / (n - 1)
    out["normalized_std"] = float(var.clamp(min=0).sqrt().mean())
    # mean over pairs i != j of z_i . z_j = (|sum z|^2 - sum |z|^2) / (n (n - 1)), from the centred moments
    out["mean_cosine"] = float(mean.dot(mean)) - float(own["cxx"].sum()) / (n * (n - 1))
    out["collapsed_dimensions"] = float(M.collapsed_dimensions(lam))
    fit = M.alpha_req(lam)
    out["alpha_req"], out["alpha_req_r2"] = float(fit.alpha), float(fit.r2)
    out["nonfinite_fraction"] = nonfinite / (n * d)
    nm = norm_sum / max(norm_n, 1)
    out["norm_mean"] = nm
    out["norm_std"] = math.sqrt(max(norm_sq - norm_n * nm * nm, 0.0) / max(norm_n - 1, 1))
    out["norm_min"], out["norm_max"] = norm_min, norm_max
    if pos_file is not None:
        out["alignment"] = align_sum / n
        if d >= 2:
            out["redundancy"] = float(M.redundancy_from_moments(xy["cxy"], xy["cxx"], xy["cyy"], n, xy["mx"],
                                                                xy["my"]))
    return {"file": path, "rows": n, "dim": d, "mode": "streamed", "chunk_rows": chunk_rows, "metrics": out}


def _moments(d: int) -> Dict[str, torch.Tensor]:
    """Empty fp64 accumulators for :func:`_merge_cross_moments`: the means ``mx``, ``my``, the centred co-moment
    ``cxy`` (D x D) and the per-column centred second moments ``cxx``, ``cyy``."""
    zeros = functools.partial(torch.zeros, dtype=torch.float64)
    return {"mx": zeros(d), "my": zeros(d), "cxy": zeros(d, d), "cxx": zeros(d), "cyy": zeros(d)}


def _merge_cross_moments(acc: Dict[str, torch.Tensor], x: torch.Tensor, y: Optional[torch.Tensor], n: int) -> None:
    """Add a chunk of paired rows ``(x, y)`` (fp64) to the centred co-moments in ``acc`` (``n`` rows so far; Chan et
    al.'s merge: no cancellation from subtracting products of large means at the end). ``y=None``: the moments of
    ``x`` alone (``cxy`` its centred Gram; ``my``, ``cyy`` left as they are)."""
    m = x.shape[0]
    cx = x.mean(0)
    xc = x - cx
    dx = cx - acc["mx"]
    w = n * m / (n + m)
    if y is None:
        acc["cxy"] += gram64(xc) + torch.outer(dx, dx) * w
    else:
        cy = y.mean(0)
        yc = y - cy
        dy = cy - acc["my"]
        acc["cxy"] += xc.T @ yc + torch.outer(dx, dy) * w
        acc["cyy"] += (yc * yc).sum(0) + dy * dy * w
        acc["my"] += dy * (m / (n + m))
    acc["cxx"] += (xc * xc).sum(0) + dx * dx * w
    acc["mx"] += dx * (m / (n + m))
