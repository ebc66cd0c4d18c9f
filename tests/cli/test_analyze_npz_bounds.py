"""`spherewatch analyze` on hostile `.npz` files (issue 22 row 12): a small compressed file that expands to a huge
array, and a small member chosen with `--key` beside a huge decoy. The ceiling is checked before anything is
decompressed, and only the selected member is read."""
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import spherewatch.metrics as M
from spherewatch.analyze import MAX_NPZ_MEMBER_BYTES, analyze

BIG_ROWS, DIM = 65536, 256  # 64 MiB of float32 zeros: ~64 KiB once deflated
LIMIT = 4 << 20  # a 4 MiB ceiling stands in for the default's 2 GiB (a 4 GiB bomb would take minutes to write)


def write_member(zf, name, shape, dtype=np.float32, fill=None):
    """Write one .npy member, streaming zeros (or ``fill``) so the test never holds the big array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        if fill is not None:
            fh.write(np.ascontiguousarray(fill, dtype=dtype).tobytes())
            return
        chunk = bytes(1 << 20)
        left = int(np.prod(shape)) * np.dtype(dtype).itemsize
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    z = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    with zipfile.ZipFile(d / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        write_member(zf, "z", (BIG_ROWS, DIM))
    with zipfile.ZipFile(d / "decoy.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        write_member(zf, "decoy", (BIG_ROWS, DIM))
        write_member(zf, "z", tuple(z.shape), fill=z.numpy())
    # a member whose zip entry is small but whose header declares a huge array (the zip directory alone can lie)
    with zipfile.ZipFile(d / "liar.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        write_member(zf, "z", (1 << 30, DIM), fill=np.zeros((4, DIM), np.float32))
    return d, z


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_the_default_ceiling_is_documented_and_sane():
    assert MAX_NPZ_MEMBER_BYTES == 2 << 30


def test_a_bomb_is_refused_before_it_is_decompressed(files):
    d, _ = files
    assert (d / "bomb.npz").stat().st_size < 1 << 20  # small on disk, 64 MiB inside

    def run():
        with pytest.raises(ValueError, match=r"bomb\.npz.*\[z\].*671089\d\d bytes uncompressed.*--max-npz-bytes"):
            analyze(str(d / "bomb.npz"), max_npz_bytes=LIMIT)

    assert peak_bytes(run) < 2 << 20


def test_a_header_that_declares_a_huge_array_is_refused(files):
    d, _ = files
    with pytest.raises(ValueError, match=r"liar\.npz.*header declares shape \(1073741824, 256\)"):
        analyze(str(d / "liar.npz"), max_npz_bytes=LIMIT)


def test_only_the_member_chosen_with_key_is_read(files):
    d, z = files
    out = {}
    peak = peak_bytes(lambda: out.update(analyze(str(d / "decoy.npz"), key="z", max_npz_bytes=LIMIT)))
    assert peak < 8 << 20, peak  # the 64 MiB decoy was never decompressed
    assert out["rows"] == 300 and out["dim"] == 16
    assert out["metrics"]["effective_rank"] == pytest.approx(float(M.effective_rank(z)), rel=1e-5)
    with pytest.raises(ValueError, match=r"decoy\.npz.*\[decoy\]"):  # the decoy itself is refused when chosen
        analyze(str(d / "decoy.npz"), key="decoy", max_npz_bytes=LIMIT)


def test_the_cli_names_the_limit_and_the_flag(files):
    d, _ = files
    res = subprocess.run([sys.executable, "-m", "spherewatch", "analyze", str(d / "bomb.npz"), "--max-npz-bytes",
                          str(LIMIT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "--max-npz-bytes" in res.stderr and "Traceback" not in res.stderr
