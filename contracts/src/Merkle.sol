// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Verity's keccak Merkle trees (docs/spec/canonical.md §8)
/// @notice Inner node = keccak256(left ‖ right); a node without a partner at the end of a level is paired
///         with the zero hash; one leaf is its own root. A tree of `width` leaves has depth ⌈log₂ width⌉.
library Merkle {
    error BadProof();

    /// Depth of the padded tree over `width` leaves.
    function depth(uint256 width) internal pure returns (uint256 d) {
        while ((uint256(1) << d) < width) d++;
    }

    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32 h) {
        assembly {
            mstore(0x00, a)
            mstore(0x20, b)
            h := keccak256(0x00, 0x40)
        }
    }

    /// Root of a tree of `width` leaves from `leaf` at `index` and its bottom-up sibling path (whose length
    /// must be the tree's depth).
    function rootOf(bytes32 leaf, uint256 index, uint256 width, bytes32[] calldata path)
        internal
        pure
        returns (bytes32 h)
    {
        if (index >= width || path.length != depth(width)) revert BadProof();
        h = leaf;
        for (uint256 i = 0; i < path.length; i++) {
            h = (index & 1) == 0 ? hashPair(h, path[i]) : hashPair(path[i], h);
            index >>= 1;
        }
    }

    /// Root of a tree of `width` leaves in which the leaves `hashes` at strictly increasing `indices` are
    /// proven together by `proof`: level by level from the leaves, left to right, a sibling that is
    /// neither known nor padding is taken from `proof` (exactly the Rust `multiproof_root`).
    function multiRoot(uint256 width, uint256[] calldata indices, bytes32[] memory hashes, bytes32[] calldata proof)
        internal
        pure
        returns (bytes32)
    {
        uint256 n = indices.length;
        if (n == 0 || n != hashes.length || indices[n - 1] >= width) revert BadProof();
        uint256[] memory idx = new uint256[](n);
        for (uint256 i = 0; i < n; i++) {
            if (i > 0 && indices[i] <= indices[i - 1]) revert BadProof();
            idx[i] = indices[i];
        }
        uint256 p;
        while (width > 1) {
            uint256 m;
            for (uint256 i = 0; i < n; i++) {
                uint256 pos = idx[i];
                bytes32 h = hashes[i];
                bytes32 parent;
                if (pos & 1 == 0) {
                    bytes32 sib;
                    if (i + 1 < n && idx[i + 1] == pos + 1) {
                        sib = hashes[++i];
                    } else if (pos + 1 < width) {
                        if (p >= proof.length) revert BadProof();
                        sib = proof[p++];
                    }
                    parent = hashPair(h, sib);
                } else {
                    if (p >= proof.length) revert BadProof();
                    parent = hashPair(proof[p++], h);
                }
                idx[m] = pos >> 1;
                hashes[m] = parent;
                m++;
            }
            n = m;
            width = (width + 1) >> 1;
        }
        if (p != proof.length) revert BadProof();
        return hashes[0];
    }

    /// keccak256(u64_be(count) ‖ root): a list or elements root from its length and tree.
    function bindLength(uint256 count, bytes32 root) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(uint64(count), root));
    }

    /// Root of a list of hashes (in place: `xs` is overwritten), bound to its length: pairs hashed level by
    /// level with a zero right child for an odd last node.
    function listRoot(bytes32[] memory xs) internal pure returns (bytes32) {
        uint256 n = xs.length;
        if (n == 0) return bindLength(0, bytes32(0));
        return bindLength(n, treeRoot(xs));
    }

    /// Root of the tree over `xs` (overwritten) without its length: what a word tree's root is.
    function treeRoot(bytes32[] memory xs) internal pure returns (bytes32) {
        uint256 w = xs.length;
        while (w > 1) {
            for (uint256 i = 0; i < w; i += 2) {
                xs[i / 2] = hashPair(xs[i], i + 1 < w ? xs[i + 1] : bytes32(0));
            }
            w = (w + 1) / 2;
        }
        return xs[0];
    }
}
