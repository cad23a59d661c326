"""The dtype vocabulary: half-precision storage types and the optional ml_dtypes package."""

import sys

import numpy as np
import pytest

from normax import _checks, _dtypes


@pytest.mark.parametrize(
    ("name", "expected"),
    [("float32", np.float32), ("float64", np.float64), ("float16", np.float16),
     (np.float16, np.float16), ("f4", np.float32)],
)
def test_resolve(name, expected):
    assert _dtypes.resolve(name) == np.dtype(expected)


@pytest.mark.parametrize("name", ["int32", "complex64", "nosuchtype", object])
def test_resolve_refuses_other_types(name):
    with pytest.raises(TypeError, match="dtype must be one of float16, bfloat16, float32"):
        _dtypes.resolve(name)


def test_bfloat16_with_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert _dtypes.resolve("bfloat16") == bf16
    assert _dtypes.half_kind(bf16) == _dtypes.KIND_BF16
    assert _dtypes.compute_dtype(bf16) == np.float32
    x = np.zeros(3, bf16)
    assert _checks.float_array(x, "x", half=True) is x
    with pytest.raises(TypeError, match="x has unsupported dtype bfloat16; supported: float32"):
        _checks.float_array(x, "x")


def test_bfloat16_without_ml_dtypes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes -> ImportError
    with pytest.raises(ImportError, match="bfloat16 needs the ml_dtypes package: pip install"):
        _dtypes.resolve("bfloat16")
    # float16 needs nothing beyond NumPy
    assert _dtypes.half_kind(np.dtype(np.float16)) == _dtypes.KIND_F16


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
def test_half_kind_of_other_types(dtype):
    expected = _dtypes.KIND_F16 if dtype is np.float16 else 0
    assert _dtypes.half_kind(np.dtype(dtype)) == expected
    assert _dtypes.compute_dtype(np.dtype(dtype)) == (
        np.float32 if dtype is np.float16 else np.dtype(dtype))


def test_float16_refused_where_half_is_not_supported():
    with pytest.raises(TypeError, match="unsupported dtype float16; supported: float32, float64"):
        _checks.float_array(np.zeros(2, np.float16), "x")
    assert _checks.float_array(np.zeros(2, np.float16), "x", half=True).dtype == np.float16


def test_show_config_names_the_conversion_path():
    import normax

    info = normax._config.config()["extension"]
    if not info["loaded"]:
        pytest.skip("no compiled extension")
    assert info["float16"] in ("portable", "F16C", "AVX-512F")
    assert info["bfloat16"] in ("integer rounding", "AVX-512 BF16")
