// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Verity inference receipts (EIP-712), as specified in docs/spec/receipts.md.
/// @notice A node signs Receipt(requestId, modelId, inputHash, outputHash, traceRoot, node, timestamp)
///         under the domain ("Verity", "1", chainId, verifyingContract). This library recomputes the digest
///         and recovers the signer, accepting one encoding per signature only: v ∈ {27, 28} and low s.
library VerityReceipts {
    struct Receipt {
        bytes32 requestId;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 outputHash;
        bytes32 traceRoot;
        address node;
        uint64 timestamp;
    }

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 requestId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,bytes32 traceRoot,address node,uint64 timestamp)"
    );
    /// secp256k1 n / 2: signatures with a larger s are the malleable twin and are refused.
    uint256 internal constant HALF_N = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    function domainSeparator(uint256 chainId, address verifyingContract) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("Verity"), keccak256("1"), chainId, verifyingContract)
        );
    }

    function structHash(Receipt memory r) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                RECEIPT_TYPEHASH, r.requestId, r.modelId, r.inputHash, r.outputHash, r.traceRoot, r.node, r.timestamp
            )
        );
    }

    function digest(Receipt memory r, bytes32 separator) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", separator, structHash(r)));
    }

    /// @notice The signer of a 65-byte r ‖ s ‖ v signature over `d`, or address(0) if it is malformed.
    function recover(bytes32 d, bytes memory sig) internal pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
            v := byte(0, mload(add(sig, 96)))
        }
        // one encoding per signature: v is 27 or 28 (never 0 or 1) and s is in the lower half
        if ((v != 27 && v != 28) || uint256(s) > HALF_N) return address(0);
        return ecrecover(d, v, r, s);
    }

    /// @notice Whether `sig` is `r.node`'s signature of `r` under the given domain.
    function isSignedByNode(Receipt memory r, bytes32 separator, bytes memory sig) internal pure returns (bool) {
        address signer = recover(digest(r, separator), sig);
        return signer != address(0) && signer == r.node;
    }
}
