// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/Test.sol";

/// What an EVM verifier of Verity's zk proofs would pay for its heaviest step: evaluating the opened,
/// combined row `u` (2^b elements of the Goldilocks degree-2 extension, X² = 7) at one query position,
/// by Horner's rule with MULMOD/ADDMOD. The gas is printed (`forge test --match-contract GoldilocksCost
/// -vv`); docs/spec/zk.md multiplies it by the queries and openings of a proof.
contract GoldilocksCost is Test {
    uint256 constant P = 0xFFFFFFFF00000001;
    address constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function log(string memory what, uint256 v) internal view {
        (bool ok,) = CONSOLE.staticcall(abi.encodeWithSignature("log(string,uint256)", what, v));
        ok;
    }

    function horner(uint256[] memory c0, uint256[] memory c1, uint256 x0, uint256 x1)
        internal
        pure
        returns (uint256 a0, uint256 a1)
    {
        unchecked {
            for (uint256 i = c0.length; i > 0; i--) {
                uint256 t0 = addmod(mulmod(a0, x0, P), mulmod(7, mulmod(a1, x1, P), P), P);
                uint256 t1 = addmod(mulmod(a0, x1, P), mulmod(a1, x0, P), P);
                a0 = addmod(t0, c0[i - 1], P);
                a1 = addmod(t1, c1[i - 1], P);
            }
        }
    }

    function test_one_row_evaluation_costs() public view {
        uint256 n = 4096; // 2^b for the MLP's constants table
        uint256[] memory c0 = new uint256[](n);
        uint256[] memory c1 = new uint256[](n);
        for (uint256 i = 0; i < n; i++) {
            c0[i] = mulmod(i + 1, 0x9E3779B97F4A7C15, P);
            c1[i] = mulmod(i + 3, 0xC2B2AE3D27D4EB4F, P);
        }
        uint256 g = gasleft();
        (uint256 a0, uint256 a1) = horner(c0, c1, 1234567, 7654321);
        uint256 used = g - gasleft();
        log("gas to evaluate a 4096-element extension row at one point", used);
        require(a0 != 0 || a1 != 0, "the evaluation is zero");
        require(used > n, "an evaluation costs more than one gas per element");
    }
}
