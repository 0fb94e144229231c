import pyarrow as pa
import pytest

from pipeline.io import InputError, read_parquet, write_parquet


def test_read_parquet_names_every_missing_column_and_reads_the_rest(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pa.table({"example_id": ["a", "b"], "x": [1, 2]}), path)
    assert read_parquet(path, columns=["x"]).column("x").to_pylist() == [1, 2]
    assert read_parquet(path).column_names == ["example_id", "x"]
    with pytest.raises(InputError, match=r"t\.parquet: no column y, z \(written by an older"):
        read_parquet(path, columns=["example_id", "y", "z"])
    with pytest.raises(InputError, match="missing.parquet: file not found"):
        read_parquet(tmp_path / "missing.parquet", columns=["x"])


def test_auto_precision_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch):
    from pipeline import io

    monkeypatch.setattr(io, "native_cpu_bf16", lambda: False)  # an AVX2-only CPU: bf16 would be emulated
    assert io.resolve_precision("auto", "cpu") == "fp32"
    assert io.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(io, "native_cpu_bf16", lambda: True)  # AVX-512-bf16 / AMX
    assert io.resolve_precision("auto", "cpu") == "bf16"
    assert io.resolve_precision("fp32", "cpu") == "fp32" and io.resolve_precision("bf16", "cpu") == "bf16"
