"""Writes the GGUF fixtures of verity-llm's tests (crates/llm/tests/fixtures/):

- quants.gguf: one tensor of 2 rows x 512 columns per supported ggml type, its block bytes random except
  the f16 block scales, which are finite values of every kind (normal, subnormal, zero, negative, the
  largest); metadata of every GGUF value type;
- quants.ref.bin: the `gguf` package's own dequantization of each tensor (little-endian f32, tensors in
  file order), the reference the exact decoding is compared with.

Deterministic (seeded); re-run it only to change the fixtures: python tests/python/make_gguf_fixtures.py
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "llm", "tests", "fixtures")

# byte offsets of the f16 scale fields inside one block, per type
SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def scale_values(rng, n):
    v = rng.uniform(-0.2, 0.2, n).astype(np.float16)
    kinds = rng.integers(0, 8, n)
    v[kinds == 0] = 0
    v[kinds == 1] = np.float16(rng.integers(1, 1024)) * np.float16(2.0**-24)  # subnormal
    v[kinds == 2] = np.float16(65504.0) * rng.choice([-1, 1])
    v[kinds == 3] = np.float16(6.1035e-05)  # smallest normal
    return v


def main():
    rng = np.random.default_rng(20261202)
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.str", "héllo")
    w.add_array("test.strs", ["a", "bc", ""])
    w.add_array("test.ints", [1, -2, 3])
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", -1.5)
    refs = []
    rows, cols = 2, 512
    for ty in SCALES:
        bs, size = gguf.GGML_QUANT_SIZES[ty]
        nblocks = rows * cols // bs
        blocks = rng.integers(0, 256, (nblocks, size), dtype=np.uint8)
        for off in SCALES[ty]:
            blocks[:, off:off + 2] = scale_values(rng, nblocks).view(np.uint8).reshape(nblocks, 2)
        data = blocks.reshape(rows, cols // bs * size)
        w.add_tensor(f"t.{ty.name}", data, raw_shape=data.shape, raw_dtype=ty)
        refs.append(dequantize(data, ty).reshape(-1))
    f = (rng.standard_normal((rows, cols)) * np.exp2(rng.integers(-30, 30, (rows, cols)))).astype(np.float32)
    f[0, :4] = [0.0, -0.0, 1e-45, -3.4e38]
    w.add_tensor("t.F32", f)
    refs.append(f.reshape(-1))
    h = rng.standard_normal((rows, cols)).astype(np.float16)
    h[0, :3] = [np.float16(2.0**-24), np.float16(-65504), 0]
    w.add_tensor("t.F16", h)
    refs.append(h.astype(np.float32).reshape(-1))
    b = (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("t.BF16", b.view(np.uint8).reshape(rows, cols * 2), raw_shape=(rows, cols * 2), raw_dtype=T.BF16)
    refs.append((b.astype(np.uint32) << 16).view(np.float32).reshape(-1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.concatenate(refs).astype("<f4").tofile(os.path.join(OUT, "quants.ref.bin"))
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
