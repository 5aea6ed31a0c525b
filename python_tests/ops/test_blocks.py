"""The host-side launch arithmetic agrees with Triton's constexpr functions it replaces."""
import triton

from rdkernels.ops._blocks import block_width, cdiv, next_power_of_2


def test_next_power_of_2_and_block_width_match_triton():
    for n in range(0, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        assert block_width(n) == max(16, triton.next_power_of_2(n)), n
    for n in (2**20 - 1, 2**20, 2**20 + 1, 2**31 - 1):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
    assert block_width(3, least=1) == 4


def test_cdiv_matches_triton():
    for a in range(-40, 300):
        for b in (1, 2, 3, 16, 32, 64, 100):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
