// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "../src/VerityReceipts.sol";

/// The receipt signed by Verity's Rust code in crates/core/src/receipt.rs (`golden_receipt_vector`):
/// Solidity must compute the same domain separator, struct hash and digest, and ecrecover must return
/// the node's address.
contract VerityReceiptsTest {
    using VerityReceipts for VerityReceipts.Receipt;

    address constant NODE = 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266;
    address constant VERIFYING = 0x5FbDB2315678afecb367f032d93F642f64180aa3;
    bytes constant SIG =
        hex"c0e09138f4abf58dff61372f598f6faca7fe18afa18730e10d6c15332f77636d1d86440480585936ba14528e396537c34990e98dba8375fd698e5e7b6359971b1b";

    function golden() internal pure returns (VerityReceipts.Receipt memory) {
        return VerityReceipts.Receipt({
            requestId: keccak256("verity golden request"),
            modelId: keccak256("verity golden model"),
            inputHash: keccak256("verity golden input"),
            outputHash: keccak256("verity golden output"),
            traceRoot: keccak256("verity golden trace"),
            node: NODE,
            timestamp: 1_800_000_000
        });
    }

    function test_matches_rust_encoding() public pure {
        bytes32 sep = VerityReceipts.domainSeparator(31337, VERIFYING);
        require(sep == 0x8ed4e4b852ed82a574407ca5418d251167fa8f5cd1ec66dda73ba1ae5ecef281, "domain separator");
        require(
            VerityReceipts.structHash(golden()) == 0xa051943aac8471320a1ff7993ff35785ebe3914c35f5001905605024645b90b3,
            "struct hash"
        );
        require(
            VerityReceipts.digest(golden(), sep) == 0x2fb427e3c1bcf93e5b859048999f753c06cf2494e4a6490388876b6e292b91dd,
            "digest"
        );
    }

    function test_ecrecover_gives_the_node() public pure {
        bytes32 sep = VerityReceipts.domainSeparator(31337, VERIFYING);
        require(VerityReceipts.recover(VerityReceipts.digest(golden(), sep), SIG) == NODE, "signer");
        require(golden().isSignedByNode(sep, SIG), "isSignedByNode");
    }

    function test_tampering_is_rejected() public pure {
        bytes32 sep = VerityReceipts.domainSeparator(31337, VERIFYING);
        VerityReceipts.Receipt memory r = golden();
        r.outputHash = keccak256("another output");
        require(!r.isSignedByNode(sep, SIG), "changed output accepted");
        r = golden();
        r.node = address(0xBEEF);
        require(!r.isSignedByNode(sep, SIG), "other node accepted");
        require(!golden().isSignedByNode(VerityReceipts.domainSeparator(1, VERIFYING), SIG), "other chain accepted");
        bytes memory bad = SIG;
        bad[64] = 0x1d; // v = 29
        require(VerityReceipts.recover(VerityReceipts.digest(golden(), sep), bad) == address(0), "bad v accepted");
    }

    function test_high_s_twin_is_rejected() public pure {
        bytes32 sep = VerityReceipts.domainSeparator(31337, VERIFYING);
        bytes32 d = VerityReceipts.digest(golden(), sep);
        bytes memory sig = SIG;
        bytes32 r;
        bytes32 s;
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
        }
        uint256 n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;
        bytes32 s2 = bytes32(n - uint256(s));
        uint8 v2 = uint8(sig[64]) == 27 ? 28 : 27;
        // The twin is a valid ECDSA signature for the same key...
        require(ecrecover(d, v2, r, s2) == NODE, "twin should recover with raw ecrecover");
        // ...but the library refuses it.
        require(VerityReceipts.recover(d, abi.encodePacked(r, s2, v2)) == address(0), "high-s accepted");
    }

    function testFuzz_random_signatures_never_recover_the_node(bytes32 r, bytes32 s, uint8 v) public pure {
        bytes32 sep = VerityReceipts.domainSeparator(31337, VERIFYING);
        bytes memory sig = abi.encodePacked(r, s, v);
        if (keccak256(sig) == keccak256(SIG)) return;
        require(!golden().isSignedByNode(sep, sig), "forged signature accepted");
    }
}
