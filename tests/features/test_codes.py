"""Entry codes: one 64-bit code per (image, view) pair, stable across processes, distinct for near-equal keys."""

import subprocess
import sys

import numpy as np

from leukexp.features.codes import entry_codes, image_codes, view_code


def test_codes_separate_images_and_views_even_with_a_shared_prefix() -> None:
    codes = entry_codes(["abcdef01", "abcdef01ff", "abcdef01", "abcdef01"], ["v", "v", "w", "v"])
    assert codes.dtype == np.uint64 and len(set(codes[:3].tolist())) == 3 and codes[0] == codes[3]
    assert entry_codes([], []).shape == (0,) and image_codes([]).shape == (0,)
    assert codes[0] == image_codes(["abcdef01"])[0] ^ view_code("v")


def test_codes_are_the_same_in_another_process() -> None:
    program = "from leukexp.features.codes import entry_codes; print(int(entry_codes(['ab12'], ['original'])[0]))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert int(done.stdout) == int(entry_codes(["ab12"], ["original"])[0]), "no salted hash: shared stores agree"
