// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./NodeRegistry.sol";

/// @title Verity's public node-selection rule
/// @notice `min(count, eligible nodes)` draws without replacement, each picking node i with probability
///         stake_i / remaining stake, using keccak256(seed ‖ draw) mod the remaining stake and walking the
///         registry's node list in order. Stakes are the registry's checkpoints at the end of the request's
///         block (`asOf`), fixed before the seed is known; a node is eligible if that stake is at least
///         the minimum stake and at least the collateral the request asks for. Every hub and every
///         off-chain coordinator uses exactly this rule.
library Assignment {
    error SeedNotReady(uint64 seedBlock);
    error SeedExpired();

    /// The seed of request `id`: keccak256(blockhash(seedBlock) ‖ id), computable once seedBlock is mined
    /// and for 256 blocks after (hubs store it on first use, so it outlives that).
    function seed(uint64 seedBlock, uint256 id) internal view returns (bytes32) {
        if (block.number <= seedBlock) revert SeedNotReady(seedBlock);
        bytes32 h = blockhash(seedBlock);
        if (h == bytes32(0)) revert SeedExpired();
        return keccak256(abi.encodePacked(h, id));
    }

    /// Whether the seed can still be computed (someone can be held to the assignment).
    function seedKnown(uint64 seedBlock) internal view returns (bool) {
        return block.number > seedBlock && blockhash(seedBlock) != bytes32(0);
    }

    function draw(NodeRegistry nodes, bytes32 seed, uint256 count, uint256 asOf, uint256 collateral)
        internal
        view
        returns (address[] memory picked)
    {
        address[] memory all = nodes.allNodes();
        uint256[] memory stake = new uint256[](all.length);
        uint256 total;
        uint256 active;
        uint256 floor = nodes.minStake();
        if (collateral > floor) floor = collateral;
        for (uint256 i = 0; i < all.length; i++) {
            uint256 s = nodes.stakeAt(all[i], asOf);
            if (s >= floor) {
                stake[i] = s;
                total += s;
                active++;
            }
        }
        if (count > active) count = active;
        picked = new address[](count);
        for (uint256 d = 0; d < count; d++) {
            uint256 x = uint256(keccak256(abi.encodePacked(seed, d))) % total;
            for (uint256 i = 0; i < all.length; i++) {
                if (stake[i] == 0) continue;
                if (x < stake[i]) {
                    picked[d] = all[i];
                    total -= stake[i];
                    stake[i] = 0;
                    break;
                }
                x -= stake[i];
            }
        }
    }
}
