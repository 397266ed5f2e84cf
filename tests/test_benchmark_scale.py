"""benchmarks.scale: sizes spread over the classes, the growth exponent, the scale table."""

import pytest

from benchmarks.scale import SCALE_CLASSES, growth_exponent, scale_counts, scale_table


def test_scale_sizes_growth_and_table() -> None:
    counts = scale_counts(5_000)
    assert set(counts) == set(SCALE_CLASSES) and sum(counts.values()) * 33 >= 5_000
    assert sum(counts.values()) * 33 < 5_000 + 33 * 5, "no more than a few images over the size"
    assert growth_exponent([1e3, 1e4, 1e5], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert growth_exponent([1e3, 1e4, 1e5], [1.0, 1.0, 1.0]) == pytest.approx(0.0, abs=1e-9)
    row = {"views": 5115.0, "images": 155.0, "cold_s": 4.0, "cold_views_per_s": 1278.0, "cold_to_raw": 0.09,
           "files": 4.0, "files_per_100k": 78.2, "job_rows": 3323.0, "job_bytes": 3.4e6, "job_read_s": 0.03,
           "np_load_s": 0.003, "read_speed_vs_np_load": 0.1, "rss_over_bytes_gb": 0.94}
    text = scale_table([row, row | {"views": 51150.0, "cold_s": 40.0, "job_read_s": 0.3}])
    assert "| 5,115 | 155 | 1,278 (0.09) | 4 (78.2) |" in text and "0.10x" in text
    assert "cold extraction 1.00, warm job read 1.00" in text
