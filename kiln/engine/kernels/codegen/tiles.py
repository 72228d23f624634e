"""The order in which a GEMM-like kernel walks its output tiles.

A launch of one program per tile ran row tiles fastest: every row tile of A was read from memory
once per column tile, because by the time the next column tile came round A had left L2. Walking
tiles in groups of GROUP_M row tiles, every column tile of a group before the next group, reads a
group's rows of A once and serves the other column tiles from L2 (a linear's weight, B, fits in L2
whole). On the H100 that took ConvNeXt-T's stage-2 fc2 (100352 x 768 -> 192) from 0.130 to 0.088 ms.
"""

GROUP_M = 8


def grouped_tile(indent: str, tile: str = "tile") -> str:
    """Triton statements that set pid_m, pid_n from the linear tile number `tile` (needs M, N, BLOCK_M, BLOCK_N)."""
    lines = [
        "tiles_m = tl.cdiv(M, BLOCK_M)",
        "tiles_n = tl.cdiv(N, BLOCK_N)",
        f"in_group = {tile} % ({GROUP_M} * tiles_n)",
        f"first_m = ({tile} // ({GROUP_M} * tiles_n)) * {GROUP_M}",
        f"group_m = tl.minimum(tiles_m - first_m, {GROUP_M})",
        "pid_m = first_m + in_group % group_m",
        "pid_n = in_group // group_m",
    ]
    return "\n".join(indent + line for line in lines)


def tile_count(m: int, n: int, block_m: int, block_n: int) -> int:
    """Programs of a grouped launch: one per output tile."""
    return -(-m // block_m) * -(-n // block_n)


# Element offsets are 32-bit unless a tensor the kernel indexes has 2**31 elements or more. Computing every
# offset of a tile in 64 bits doubled the integer work in the inner loop: on the H100 the INT8 GEMM at
# BERT-base's FC1 (4096 x 768 -> 3072) took 36.7 us with 64-bit rows and 27.6 us with 32-bit ones.
INT32_MAX = 2**31 - 1


def wide_index(*numels: int) -> bool:
    """WIDE_INDEX for a launch: some tensor it indexes (given by element count) is past 32-bit offsets."""
    return max(numels) > INT32_MAX


def span(t) -> int:
    """One past the largest element offset a strided tensor reaches from its first element."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


def index_range(name: str, program: str, block: str, indent: str) -> str:
    """Triton statements for `name = program * block + arange(block)`, widened to 64 bits only under WIDE_INDEX."""
    lines = [f"{name} = {program} * {block} + tl.arange(0, {block})", "if WIDE_INDEX:", f"    {name} = {name}.to(tl.int64)"]
    return "\n".join(indent + line for line in lines)
