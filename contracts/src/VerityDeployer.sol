// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./ModelRegistry.sol";
import "./NodeRegistry.sol";
import "./InferenceHub.sol";
import "./OptimisticHub.sol";

/// @title Deploys and wires Verity's contracts in one transaction
/// @notice The node registry lets only the two hubs slash, wired here in the same transaction; this factory
///         keeps no power afterwards, and neither does anyone else. `OneStep` (stateless) is deployed on its
///         own beforehand: with it inside, this factory's init code would pass the EVM's limit.
contract VerityDeployer {
    struct Optimistic {
        OneStep oneStep;
        uint64 responseBlocks;
        uint64 challengeBlocks;
        uint64 moveBlocks;
        uint256 commitBond;
        uint256 challengeBond;
        uint256 slashAmount;
    }

    ModelRegistry public immutable models;
    NodeRegistry public immutable nodes;
    InferenceHub public immutable hub;
    OptimisticHub public immutable optimistic;

    constructor(
        uint256 minStake,
        uint64 unbondingDelay,
        uint64 responseWindow,
        uint256 timeoutPenalty,
        Optimistic memory o
    ) {
        models = new ModelRegistry();
        nodes = new NodeRegistry(minStake, unbondingDelay);
        hub = new InferenceHub(models, nodes, responseWindow, timeoutPenalty);
        optimistic = new OptimisticHub(
            models,
            nodes,
            o.oneStep,
            o.responseBlocks,
            o.challengeBlocks,
            o.moveBlocks,
            o.commitBond,
            o.challengeBond,
            o.slashAmount
        );
        address[] memory slashers = new address[](2);
        slashers[0] = address(hub);
        slashers[1] = address(optimistic);
        nodes.wireSlashers(slashers);
    }
}
