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
