// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./Merkle.sol";

/// @title The one-step of Verity's fraud proofs: one element of one node, recomputed on-chain
/// @notice Given a model ID and a trace root, `evaluate` checks a witness (docs/spec/disputes.md, "One
///         step") — the node's item and each operand's item proven against the model ID, each operand's
///         elements root proven against the trace root (inputs, earlier nodes) or inside its item leaf
///         (constants), and the operand words it reads proven by one multiproof per operand — and
///         recomputes the element with the canonical semantics of docs/spec/canonical.md §3, bit for bit
///         as the Rust engine (`verity_engine::onestep::eval_element`). It returns `(false, 0)` when the
///         canonical semantics stop at that element (overflow, division by zero, negative square root,
///         index out of range), and reverts when the witness itself is invalid.
contract OneStep {
    struct Operand {
        bytes item;
        bytes32[] itemPath;
        bytes32 root;
        bytes32[] tracePath;
        uint256[] wordIndices;
        bytes32[] words;
        bytes32[] proof;
    }

    struct Step {
        uint64 itemCount;
        bytes32 itemRoot;
        bytes header;
        bytes32[] headerPath;
        uint64 nodeIndex;
        bytes node;
        bytes32[] nodePath;
        uint64 element;
        bytes32 traceTree;
        Operand[] operands;
    }

    /// A decoded node item. `p` holds the op's numeric parameters in encoding order; `list` an op's
    /// u32 list (Reduce axes, Transpose perm).
    struct Node {
        uint256 op;
        bytes a;
        bytes b;
        bytes out;
        int256[] p;
        uint256[] list;
        uint256[] inputs;
        uint256[] shape;
        int256 scale;
    }

    /// An operand: shape, scale and the proven words it supplies.
    struct Tensor {
        uint256[] shape;
        int256 scale;
        uint256 len;
        uint256[] idx;
        bytes32[] words;
        uint256 hint;
    }

    struct Header {
        uint256 inputs;
        uint256[][] shapes;
        int256[] scales;
        uint256 consts;
        uint256 nodes;
        uint256[] outputs;
    }

    error BadItem();
    error BadWitness(string why);
    error MissingElement(uint256 operand, uint256 index);

    /// Marks a canonical error inside the evaluation (no i32 result is ever this value).
    int256 internal constant ERR = type(int256).min;
    int256 internal constant I32_MIN = -(2 ** 31);
    int256 internal constant I32_MAX = 2 ** 31 - 1;

    /// @notice Check `s` against `modelId` and `traceRoot` and recompute its element.
    /// @return ok false if the canonical semantics stop at this element (or it is beyond the output)
    /// @return value the element (when ok)
    /// @return len the element count of the node's output (the disputed tensor must have exactly this many)
    function evaluate(bytes32 modelId, bytes32 traceRoot, Step calldata s)
        external
        pure
        returns (bool ok, int256 value, uint256 len)
    {
        if (Merkle.bindLength(s.itemCount, s.itemRoot) != modelId) revert BadWitness("item root");
        if (Merkle.rootOf(keccak256(s.header), 0, s.itemCount, s.headerPath) != s.itemRoot) {
            revert BadWitness("header");
        }
        Header memory h = parseHeader(s.header);
        if (s.nodeIndex >= h.nodes) revert BadWitness("node index");
        if (Merkle.rootOf(keccak256(s.node), 1 + s.nodeIndex, s.itemCount, s.nodePath) != s.itemRoot) {
            revert BadWitness("node");
        }
        if (Merkle.bindLength(h.inputs + h.nodes, s.traceTree) != traceRoot) revert BadWitness("trace root");
        Node memory n = parseNode(s.node);
        len = numel(n.shape);
        // An element beyond the node's output has no value: a tensor claimed longer is malformed.
        if (s.element >= len) return (false, 0, len);
        if (s.operands.length != n.inputs.length) revert BadWitness("operands");
        Tensor[] memory ts = new Tensor[](n.inputs.length);
        for (uint256 o = 0; o < n.inputs.length; o++) {
            ts[o] = operand(s, h, n.inputs[o], s.operands[o]);
        }
        value = compute(n, ts, s.element);
        ok = value != ERR;
        if (!ok) value = 0;
    }

    // ------------------------------------------------------------------ witness checks

    function operand(Step calldata s, Header memory h, uint256 v, Operand calldata w)
        internal
        pure
        returns (Tensor memory t)
    {
        uint256 traceCount = h.inputs + h.nodes;
        if (v < h.inputs) {
            if (Merkle.rootOf(w.root, v, traceCount, w.tracePath) != s.traceTree) revert BadWitness("input root");
            t.shape = h.shapes[v];
            t.scale = h.scales[v];
        } else if (v < h.inputs + h.consts) {
            bytes32 leaf = keccak256(abi.encodePacked(w.item, w.root));
            if (Merkle.rootOf(leaf, 1 + h.nodes + (v - h.inputs), s.itemCount, w.itemPath) != s.itemRoot) {
                revert BadWitness("constant");
            }
            bytes memory d = w.item;
            uint256 pos;
            uint256 tag;
            (tag, pos) = rd(d, 0, 1);
            if (tag != 2) revert BadItem();
            (t.shape, pos) = rdShape(d, pos);
            uint256 sc;
            (sc, pos) = rd(d, pos, 1);
            t.scale = int256(int8(uint8(sc)));
        } else {
            uint256 j = v - h.inputs - h.consts;
            if (j >= s.nodeIndex) revert BadWitness("operand order");
            if (Merkle.rootOf(keccak256(w.item), 1 + j, s.itemCount, w.itemPath) != s.itemRoot) {
                revert BadWitness("operand node");
            }
            if (Merkle.rootOf(w.root, h.inputs + j, traceCount, w.tracePath) != s.traceTree) {
                revert BadWitness("operand root");
            }
            Node memory m = parseNode(w.item);
            t.shape = m.shape;
            t.scale = m.scale;
        }
        t.len = numel(t.shape);
        if (w.wordIndices.length > 0) {
            if (w.words.length != w.wordIndices.length) revert BadWitness("words");
            bytes32[] memory leaves = new bytes32[](w.words.length);
            for (uint256 i = 0; i < leaves.length; i++) {
                leaves[i] = keccak256(abi.encodePacked(w.words[i]));
            }
            bytes32 tree = Merkle.multiRoot((t.len + 7) / 8, w.wordIndices, leaves, w.proof);
            if (Merkle.bindLength(t.len, tree) != w.root) revert BadWitness("words root");
        }
        t.idx = w.wordIndices;
        t.words = w.words;
    }

    // ------------------------------------------------------------------ item decoding

    function rd(bytes memory b, uint256 pos, uint256 n) internal pure returns (uint256 v, uint256 next) {
        if (pos + n > b.length) revert BadItem();
        for (uint256 i = 0; i < n; i++) {
            v = (v << 8) | uint8(b[pos + i]);
        }
        next = pos + n;
    }

    function rdI32(bytes memory b, uint256 pos) internal pure returns (int256 v, uint256 next) {
        uint256 u;
        (u, next) = rd(b, pos, 4);
        v = int256(int32(uint32(u)));
    }

    function rdShape(bytes memory b, uint256 pos) internal pure returns (uint256[] memory shape, uint256 next) {
        uint256 rank;
        (rank, next) = rd(b, pos, 1);
        if (rank > 8) revert BadItem();
        shape = new uint256[](rank);
        for (uint256 i = 0; i < rank; i++) {
            (shape[i], next) = rd(b, next, 4);
        }
    }

    function rdU32s(bytes memory b, uint256 pos) internal pure returns (uint256[] memory xs, uint256 next) {
        uint256 n;
        (n, next) = rd(b, pos, 4);
        if (n > b.length) revert BadItem();
        xs = new uint256[](n);
        for (uint256 i = 0; i < n; i++) {
            (xs[i], next) = rd(b, next, 4);
        }
    }

    function rdLabels(bytes memory b, uint256 pos) internal pure returns (bytes memory l, uint256 next) {
        uint256 n;
        (n, next) = rd(b, pos, 1);
        if (next + n > b.length) revert BadItem();
        l = new bytes(n);
        for (uint256 i = 0; i < n; i++) {
            l[i] = b[next + i];
        }
        next += n;
    }

    function skipStr(bytes memory b, uint256 pos) internal pure returns (uint256 next) {
        uint256 n;
        (n, next) = rd(b, pos, 4);
        next += n;
        if (next > b.length) revert BadItem();
    }

    function parseHeader(bytes memory b) internal pure returns (Header memory h) {
        uint256 pos;
        uint256 x;
        (x, pos) = rd(b, 0, 1);
        if (x != 0) revert BadItem();
        (x, pos) = rd(b, pos, 1);
        if (x != 1) revert BadItem();
        (h.inputs, pos) = rd(b, pos, 4);
        if (h.inputs > b.length) revert BadItem();
        h.shapes = new uint256[][](h.inputs);
        h.scales = new int256[](h.inputs);
        for (uint256 i = 0; i < h.inputs; i++) {
            pos = skipStr(b, pos);
            (h.shapes[i], pos) = rdShape(b, pos);
            (x, pos) = rd(b, pos, 1);
            h.scales[i] = int256(int8(uint8(x)));
            (x, pos) = rd(b, pos, 1);
        }
        (h.consts, pos) = rd(b, pos, 4);
        (h.nodes, pos) = rd(b, pos, 4);
        uint256 n;
        (n, pos) = rd(b, pos, 4);
        if (n > b.length) revert BadItem();
        h.outputs = new uint256[](n);
        for (uint256 i = 0; i < n; i++) {
            pos = skipStr(b, pos);
            (h.outputs[i], pos) = rd(b, pos, 4);
        }
        if (pos != b.length) revert BadItem();
    }

    /// @notice What a header item says: input, constant and node counts and the outputs' value ids.
    function headerInfo(bytes calldata header)
        external
        pure
        returns (uint256 inputs, uint256 consts, uint256 nodes, uint256[] memory outputs)
    {
        Header memory h = parseHeader(header);
        return (h.inputs, h.consts, h.nodes, h.outputs);
    }

    function rdWindow(bytes memory b, uint256 pos, int256[] memory p) internal pure returns (uint256 next) {
        next = pos;
        for (uint256 i = 0; i < 10; i++) {
            uint256 v;
            (v, next) = rd(b, next, 4);
            p[i] = int256(v);
        }
    }

    function parseNode(bytes memory b) internal pure returns (Node memory n) {
        uint256 pos;
        uint256 x;
        (x, pos) = rd(b, 0, 1);
        if (x != 1) revert BadItem();
        pos = skipStr(b, pos);
        (n.op, pos) = rd(b, pos, 1);
        uint256 op = n.op;
        n.p = new int256[](12);
        if (op == 1) {
            (n.a, pos) = rdLabels(b, pos);
            (n.b, pos) = rdLabels(b, pos);
            (n.out, pos) = rdLabels(b, pos);
        } else if (op == 2) {
            pos = rdWindow(b, pos, n.p);
            (x, pos) = rd(b, pos, 4);
            n.p[10] = int256(x);
        } else if (op == 9 || op == 11) {
            (n.p[0], pos) = rdI32(b, pos);
            (n.p[1], pos) = rdI32(b, pos);
        } else if (op == 10) {
            (n.p[0], pos) = rdI32(b, pos);
            (x, pos) = rd(b, pos, 1);
            n.p[1] = int256(int8(uint8(x)));
        } else if (op == 16) {
            (x, pos) = rd(b, pos, 1);
            n.p[0] = int256(x);
            (n.list, pos) = rdU32s(b, pos);
        } else if (op == 17) {
            (x, pos) = rd(b, pos, 4);
            n.p[0] = int256(x);
            (n.p[1], pos) = rdI32(b, pos);
            (n.p[2], pos) = rdI32(b, pos);
        } else if (op == 18) {
            pos = rdWindow(b, pos, n.p);
        } else if (op == 19) {
            pos = rdWindow(b, pos, n.p);
            (x, pos) = rd(b, pos, 1);
            n.p[10] = int256(x);
        } else if (op == 21) {
            (n.list, pos) = rdU32s(b, pos);
        } else if (op == 22 || op == 24) {
            (x, pos) = rd(b, pos, 4);
            n.p[0] = int256(x);
        } else if (op == 23) {
            for (uint256 i = 0; i < 4; i++) {
                (x, pos) = rd(b, pos, 4);
                n.p[i] = int256(x);
            }
        } else if (op == 0 || op > 25) {
            revert BadItem();
        }
        (n.inputs, pos) = rdU32s(b, pos);
        (n.shape, pos) = rdShape(b, pos);
        (x, pos) = rd(b, pos, 1);
        n.scale = int256(int8(uint8(x)));
        if (pos != b.length) revert BadItem();
    }

    // ------------------------------------------------------------------ canonical arithmetic (§2)

    function rshift(int256 x, int256 k) internal pure returns (int256) {
        if (k > 0) return (x + (int256(1) << uint256(k - 1))) >> uint256(k);
        return x << uint256(-k);
    }

    /// floor(a / b) for b > 0.
    function floorDiv(int256 a, int256 b) internal pure returns (int256 q) {
        q = a / b;
        if (a % b != 0 && a < 0) q -= 1;
    }

    function divRound(int256 a, int256 b) internal pure returns (int256) {
        if (b == 0) return ERR;
        if (b < 0) (a, b) = (-a, -b);
        return floorDiv(2 * a + b, 2 * b);
    }

    function isqrtRound(uint256 n) internal pure returns (uint256 r) {
        if (n < 2) return n;
        r = n;
        uint256 y = (r + 1) / 2;
        while (y < r) {
            r = y;
            y = (r + n / r) / 2;
        }
        if (n > r * r + r) r += 1;
    }

    function fit(int256 x) internal pure returns (int256) {
        return (x == ERR || x < I32_MIN || x > I32_MAX) ? ERR : x;
    }

    function rescaled(int256 v, int256 k) internal pure returns (int256) {
        return fit(rshift(v, k));
    }

    // ------------------------------------------------------------------ indexing

    function numel(uint256[] memory shape) internal pure returns (uint256 n) {
        n = 1;
        for (uint256 i = 0; i < shape.length; i++) {
            n *= shape[i];
        }
    }

    function unravel(uint256 e, uint256[] memory shape) internal pure returns (uint256[] memory idx) {
        idx = new uint256[](shape.length);
        for (uint256 ax = shape.length; ax > 0; ax--) {
            uint256 d = shape[ax - 1];
            if (d > 0) {
                idx[ax - 1] = e % d;
                e /= d;
            }
        }
    }

    function ravel(uint256[] memory idx, uint256[] memory shape) internal pure returns (uint256 f) {
        for (uint256 i = 0; i < shape.length; i++) {
            f = f * shape[i] + idx[i];
        }
    }

    function strides(uint256[] memory shape) internal pure returns (uint256[] memory st) {
        st = new uint256[](shape.length);
        uint256 acc = 1;
        for (uint256 i = shape.length; i > 0; i--) {
            st[i - 1] = acc;
            acc *= shape[i - 1];
        }
    }

    function bcastIndex(uint256[] memory oi, uint256[] memory shape) internal pure returns (uint256 f) {
        uint256 off = oi.length - shape.length;
        for (uint256 i = 0; i < shape.length; i++) {
            f = f * shape[i] + (shape[i] == 1 ? 0 : oi[off + i]);
        }
    }

    /// Element `i` of operand `t` from its proven words.
    function get(Tensor memory t, uint256 o, uint256 i) internal pure returns (int256) {
        uint256 w = i >> 3;
        uint256[] memory idx = t.idx;
        uint256 p = t.hint;
        if (!(p < idx.length && idx[p] == w)) {
            if (p + 1 < idx.length && idx[p + 1] == w) {
                p = p + 1;
            } else {
                uint256 lo = 0;
                uint256 hi = idx.length;
                while (lo < hi) {
                    uint256 mid = (lo + hi) >> 1;
                    if (idx[mid] < w) lo = mid + 1;
                    else hi = mid;
                }
                if (lo == idx.length || idx[lo] != w) revert MissingElement(o, i);
                p = lo;
            }
            t.hint = p;
        }
        return int256(int32(uint32(uint256(t.words[p]) >> (224 - 32 * (i & 7)))));
    }

    // ------------------------------------------------------------------ ops (§3)

    function compute(Node memory n, Tensor[] memory ts, uint256 e) internal pure returns (int256) {
        uint256 op = n.op;
        uint256[] memory oi = unravel(e, n.shape);
        int256 so = n.scale;
        if (op == 1) return einsum(n, ts, oi);
        if (op == 2) return conv(n, ts, oi);
        if (op >= 3 && op <= 8) return binary(op, ts, oi, so);
        if (op == 9) {
            int256 y = rshift(get(ts[0], 0, e), ts[0].scale - so);
            if (y < n.p[0]) y = n.p[0];
            if (y > n.p[1]) y = n.p[1];
            return y;
        }
        if (op == 10) {
            int256 x = get(ts[0], 0, e);
            if (x >= 0) return rescaled(x, ts[0].scale - so);
            return rescaled(x * n.p[0], ts[0].scale + n.p[1] - so);
        }
        if (op == 11) {
            int256 x = get(ts[0], 0, e);
            return get(ts[1], 1, tableIndex(x, n.p[0], n.p[1], ts[1].len));
        }
        if (op == 12 || op == 20) return rescaled(get(ts[0], 0, e), ts[0].scale - so);
        if (op == 13) {
            int256 x = get(ts[0], 0, e);
            if (x < 0) return ERR;
            int256 m = rshift(x, ts[0].scale - 2 * so);
            return fit(int256(isqrtRound(uint256(m < 0 ? int256(0) : m))));
        }
        if (op == 14) {
            int256 x = get(ts[0], 0, e);
            if (x <= 0) return ERR;
            int256 ex = 2 * so + ts[0].scale;
            int256 q = ex >= 0 ? (int256(1) << uint256(ex)) / x : int256(0);
            return fit(int256(isqrtRound(uint256(q))));
        }
        if (op == 15) {
            int256 x = get(ts[0], 0, e);
            int256 ex = so + ts[0].scale;
            if (ex >= 0) return fit(divRound(int256(1) << uint256(ex), x));
            return fit(divRound(1, x << uint256(-ex)));
        }
        if (op == 16) return reduce(n, ts[0], oi, so);
        if (op == 17) return softmax(n, ts, oi, so);
        if (op == 18 || op == 19) return pool(n, ts[0], oi, so);
        if (op == 21) {
            uint256[] memory idx = new uint256[](oi.length);
            for (uint256 i = 0; i < n.list.length; i++) {
                idx[n.list[i]] = oi[i];
            }
            return rescaled(get(ts[0], 0, ravel(idx, ts[0].shape)), ts[0].scale - so);
        }
        if (op == 22) {
            uint256 ax = uint256(n.p[0]);
            uint256 pos = oi[ax];
            for (uint256 p = 0; p < ts.length; p++) {
                uint256 d = ts[p].shape[ax];
                if (pos < d) {
                    oi[ax] = pos;
                    return rescaled(get(ts[p], p, ravel(oi, ts[p].shape)), ts[p].scale - so);
                }
                pos -= d;
            }
            return ERR;
        }
        if (op == 23) {
            uint256 ax = uint256(n.p[0]);
            oi[ax] = uint256(n.p[1]) + oi[ax] * uint256(n.p[3]);
            return rescaled(get(ts[0], 0, ravel(oi, ts[0].shape)), ts[0].scale - so);
        }
        if (op == 24) return gather(n, ts, oi, so);
        // 25: Broadcast
        return rescaled(get(ts[0], 0, bcastIndex(oi, ts[0].shape)), ts[0].scale - so);
    }

    function tableIndex(int256 x, int256 shift, int256 lo, uint256 len) internal pure returns (uint256) {
        int256 i = rshift(x, shift) - lo;
        if (i < 0) return 0;
        if (uint256(i) > len - 1) return len - 1;
        return uint256(i);
    }

    function binary(uint256 op, Tensor[] memory ts, uint256[] memory oi, int256 so) internal pure returns (int256) {
        int256 x = get(ts[0], 0, bcastIndex(oi, ts[0].shape));
        int256 y = get(ts[1], 1, bcastIndex(oi, ts[1].shape));
        int256 sa = ts[0].scale;
        int256 sb = ts[1].scale;
        int256 m = sa > sb ? sa : sb;
        int256 xl = x << uint256(m - sa);
        int256 yl = y << uint256(m - sb);
        if (op == 3) return rescaled(xl + yl, m - so);
        if (op == 4) return rescaled(xl - yl, m - so);
        if (op == 5) return rescaled(x * y, sa + sb - so);
        if (op == 7) return rescaled(xl > yl ? xl : yl, m - so);
        if (op == 8) return rescaled(xl < yl ? xl : yl, m - so);
        int256 ex = so + sb - sa;
        if (ex >= 0) return fit(divRound(x << uint256(ex), y));
        return fit(divRound(x, y << uint256(-ex)));
    }

    /// Per-operand offsets of an EinSum: the base from the output labels, a stride per summed label.
    function einOffsets(bytes memory labels, uint256[] memory shape, bytes memory out, bytes memory summed, uint256[] memory oi)
        internal
        pure
        returns (uint256 base, uint256[] memory st)
    {
        uint256[] memory s = strides(shape);
        st = new uint256[](summed.length);
        for (uint256 p = 0; p < labels.length; p++) {
            if (shape[p] == 1) continue;
            bytes1 l = labels[p];
            bool inOut;
            for (uint256 q = 0; q < out.length; q++) {
                if (out[q] == l) {
                    base += oi[q] * s[p];
                    inOut = true;
                    break;
                }
            }
            if (inOut) continue;
            for (uint256 j = 0; j < summed.length; j++) {
                if (summed[j] == l) st[j] += s[p];
            }
        }
    }

    /// The summation of an EinSum element: the summed labels' sizes and each operand's offsets.
    struct Ein {
        uint256[] dims;
        uint256 total;
        uint256 offA;
        uint256 offB;
        uint256[] stA;
        uint256[] stB;
    }

    function einPlan(Node memory n, Tensor[] memory ts, uint256[] memory oi) internal pure returns (Ein memory q) {
        uint256[] memory size = new uint256[](256);
        for (uint256 p = 0; p < n.a.length; p++) {
            uint256 l = uint8(n.a[p]);
            if (ts[0].shape[p] > size[l]) size[l] = ts[0].shape[p];
        }
        for (uint256 p = 0; p < n.b.length; p++) {
            uint256 l = uint8(n.b[p]);
            if (ts[1].shape[p] > size[l]) size[l] = ts[1].shape[p];
        }
        bytes memory summed = summedLabels(n);
        q.dims = new uint256[](summed.length);
        q.total = 1;
        for (uint256 j = 0; j < summed.length; j++) {
            uint256 d = size[uint8(summed[j])];
            q.dims[j] = d == 0 ? 1 : d;
            q.total *= d;
        }
        (q.offA, q.stA) = einOffsets(n.a, ts[0].shape, n.out, summed, oi);
        (q.offB, q.stB) = einOffsets(n.b, ts[1].shape, n.out, summed, oi);
    }

    function einAcc(Tensor[] memory ts, Ein memory q) internal pure returns (int256 acc) {
        uint256 k = q.dims.length;
        uint256[] memory dig = new uint256[](k);
        uint256 offA = q.offA;
        uint256 offB = q.offB;
        for (uint256 t = 0; t < q.total; t++) {
            acc += get(ts[0], 0, offA) * get(ts[1], 1, offB);
            uint256 j = k;
            while (j > 0) {
                j--;
                dig[j]++;
                offA += q.stA[j];
                offB += q.stB[j];
                if (dig[j] < q.dims[j]) break;
                offA -= q.stA[j] * q.dims[j];
                offB -= q.stB[j] * q.dims[j];
                dig[j] = 0;
            }
        }
    }

    function einsum(Node memory n, Tensor[] memory ts, uint256[] memory oi) internal pure returns (int256) {
        int256 acc = einAcc(ts, einPlan(n, ts, oi));
        int256 sacc = ts[0].scale + ts[1].scale;
        if (ts.length > 2) {
            acc += get(ts[2], 2, bcastIndex(oi, ts[2].shape)) << uint256(sacc - ts[2].scale);
        }
        return rescaled(acc, sacc - n.scale);
    }

    function summedLabels(Node memory n) internal pure returns (bytes memory s) {
        bytes memory all = bytes.concat(n.a, n.b);
        bytes memory tmp = new bytes(all.length);
        uint256 k;
        for (uint256 i = 0; i < all.length; i++) {
            bytes1 l = all[i];
            bool skip;
            for (uint256 q = 0; q < n.out.length && !skip; q++) {
                if (n.out[q] == l) skip = true;
            }
            for (uint256 q = 0; q < k && !skip; q++) {
                if (tmp[q] == l) skip = true;
            }
            if (!skip) tmp[k++] = l;
        }
        s = new bytes(k);
        for (uint256 i = 0; i < k; i++) {
            s[i] = tmp[i];
        }
    }

    function conv(Node memory n, Tensor[] memory ts, uint256[] memory oi) internal pure returns (int256 acc) {
        uint256[] memory ws = ts[1].shape;
        uint256 grp = oi[1] / (ws[0] / uint256(n.p[10]));
        for (uint256 ci = 0; ci < ws[1]; ci++) {
            acc += convTaps(ts, n.p, oi, grp * ws[1] + ci, ci);
        }
        int256 sacc = ts[0].scale + ts[1].scale;
        if (ts.length > 2) acc += get(ts[2], 2, oi[1]) << uint256(sacc - ts[2].scale);
        return rescaled(acc, sacc - n.scale);
    }

    /// The products of one input channel `ch` (weight channel `ci`) of a Conv2d element.
    function convTaps(Tensor[] memory ts, int256[] memory p, uint256[] memory oi, uint256 ch, uint256 ci)
        internal
        pure
        returns (int256 acc)
    {
        uint256[] memory xs = ts[0].shape;
        uint256[] memory ws = ts[1].shape;
        uint256 xPlane = (oi[0] * xs[1] + ch) * xs[2];
        uint256 wBase = (oi[1] * ws[1] + ci) * ws[2];
        for (uint256 ky = 0; ky < ws[2]; ky++) {
            int256 iy = int256(oi[2]) * p[2] + int256(ky) * p[4] - p[6];
            if (iy < 0 || iy >= int256(xs[2])) continue;
            for (uint256 kx = 0; kx < ws[3]; kx++) {
                int256 ix = int256(oi[3]) * p[3] + int256(kx) * p[5] - p[7];
                if (ix < 0 || ix >= int256(xs[3])) continue;
                acc += get(ts[0], 0, (xPlane + uint256(iy)) * xs[3] + uint256(ix))
                    * get(ts[1], 1, (wBase + ky) * ws[3] + kx);
            }
        }
    }

    function reduce(Node memory n, Tensor memory t, uint256[] memory oi, int256 so) internal pure returns (int256) {
        uint256 kind = uint256(n.p[0]);
        uint256[] memory axes = n.list;
        uint256 count = 1;
        for (uint256 j = 0; j < axes.length; j++) {
            count *= t.shape[axes[j]];
        }
        if (count == 0) return 0;
        int256 acc;
        for (uint256 c = 0; c < count; c++) {
            uint256 rem = c;
            for (uint256 j = axes.length; j > 0; j--) {
                uint256 d = t.shape[axes[j - 1]];
                oi[axes[j - 1]] = rem % d;
                rem /= d;
            }
            int256 v = get(t, 0, ravel(oi, t.shape));
            if (c == 0) acc = v;
            else if (kind <= 1) acc += v;
            else if (kind == 2) acc = v > acc ? v : acc;
            else acc = v < acc ? v : acc;
        }
        if (kind == 1) {
            int256 ex = so - t.scale;
            if (ex >= 0) return fit(divRound(acc << uint256(ex), int256(count)));
            return fit(divRound(acc, int256(count) << uint256(-ex)));
        }
        return rescaled(acc, t.scale - so);
    }

    function softmax(Node memory n, Tensor[] memory ts, uint256[] memory oi, int256 so) internal pure returns (int256) {
        uint256 ax = uint256(n.p[0]);
        uint256 mine = oi[ax];
        int256[] memory lane = softmaxLane(ts[0], oi, ax);
        (int256 sum, int256 ej) = softmaxSum(ts[1], lane, n.p, mine);
        return fit(divRound(ej << uint256(so), sum));
    }

    /// Σ_j E[index(x_j − max)] over the lane (given as x_j − max), and the term of element `mine`.
    function softmaxSum(Tensor memory table, int256[] memory lane, int256[] memory p, uint256 mine)
        internal
        pure
        returns (int256 sum, int256 ej)
    {
        for (uint256 j = 0; j < lane.length; j++) {
            int256 v = get(table, 1, tableIndex(lane[j], p[1], p[2], table.len));
            sum += v;
            if (j == mine) ej = v;
        }
    }

    /// The elements of `x` along `ax` through output index `oi`, minus their maximum.
    function softmaxLane(Tensor memory x, uint256[] memory oi, uint256 ax) internal pure returns (int256[] memory lane) {
        lane = new int256[](x.shape[ax]);
        int256 mx;
        for (uint256 j = 0; j < lane.length; j++) {
            oi[ax] = j;
            lane[j] = get(x, 0, ravel(oi, x.shape));
            if (j == 0 || lane[j] > mx) mx = lane[j];
        }
        for (uint256 j = 0; j < lane.length; j++) {
            lane[j] -= mx;
        }
    }

    /// Running totals over a pooling window's valid taps.
    struct Taps {
        int256 count;
        int256 sum;
        int256 max;
    }

    function pool(Node memory n, Tensor memory t, uint256[] memory oi, int256 so) internal pure returns (int256) {
        int256[] memory p = n.p;
        Taps memory a;
        uint256 plane = oi[0] * t.shape[1] + oi[1];
        for (int256 ky = 0; ky < p[0]; ky++) {
            int256 iy = int256(oi[2]) * p[2] + ky * p[4] - p[6];
            if (iy < 0 || iy >= int256(t.shape[2])) continue;
            poolRow(t, p, oi[3], (plane * t.shape[2] + uint256(iy)) * t.shape[3], a);
        }
        if (n.op == 18) return rescaled(a.max, t.scale - so);
        int256 count = p[10] == 1 ? p[0] * p[1] : a.count;
        if (count == 0) return 0;
        int256 ex = so - t.scale;
        if (ex >= 0) return fit(divRound(a.sum << uint256(ex), count));
        return fit(divRound(a.sum, count << uint256(-ex)));
    }

    /// The valid taps of one input row (starting at flat index `row`) for output column `ox`.
    function poolRow(Tensor memory t, int256[] memory p, uint256 ox, uint256 row, Taps memory a) internal pure {
        for (int256 kx = 0; kx < p[1]; kx++) {
            int256 ix = int256(ox) * p[3] + kx * p[5] - p[7];
            if (ix < 0 || ix >= int256(t.shape[3])) continue;
            int256 v = get(t, 0, row + uint256(ix));
            if (a.count == 0 || v > a.max) a.max = v;
            a.count++;
            a.sum += v;
        }
    }

    function gather(Node memory n, Tensor[] memory ts, uint256[] memory oi, int256 so) internal pure returns (int256) {
        uint256 ax = uint256(n.p[0]);
        uint256[] memory ds = ts[0].shape;
        uint256[] memory ishape = ts[1].shape;
        uint256 ir = ishape.length;
        uint256[] memory ii = new uint256[](ir);
        for (uint256 i = 0; i < ir; i++) {
            ii[i] = oi[ax + i];
        }
        int256 i0 = get(ts[1], 1, ravel(ii, ishape));
        int256 dim = int256(ds[ax]);
        int256 j = i0 < 0 ? i0 + dim : i0;
        if (j < 0 || j >= dim) return ERR;
        uint256[] memory idx = new uint256[](ds.length);
        for (uint256 i = 0; i < ax; i++) {
            idx[i] = oi[i];
        }
        idx[ax] = uint256(j);
        for (uint256 i = ax + 1; i < ds.length; i++) {
            idx[i] = oi[i + ir - 1];
        }
        return rescaled(get(ts[0], 0, ravel(idx, ds)), ts[0].scale - so);
    }
}
