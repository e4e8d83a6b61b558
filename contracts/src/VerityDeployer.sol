// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./ModelRegistry.sol";
import "./NodeRegistry.sol";
import "./InferenceHub.sol";

/// @title Deploys and wires Verity's contracts in one transaction
/// @notice The node registry lets only the inference hub slash, wired here in the same transaction; this
///         factory keeps no power afterwards, and neither does anyone else.
contract VerityDeployer {
    ModelRegistry public immutable models;
    NodeRegistry public immutable nodes;
    InferenceHub public immutable hub;

    constructor(uint256 minStake, uint64 unbondingDelay, uint64 responseWindow, uint256 timeoutPenalty) {
        models = new ModelRegistry();
        nodes = new NodeRegistry(minStake, unbondingDelay);
        hub = new InferenceHub(models, nodes, responseWindow, timeoutPenalty);
        address[] memory slashers = new address[](1);
        slashers[0] = address(hub);
        nodes.wireSlashers(slashers);
    }
}
