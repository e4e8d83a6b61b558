// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./ModelRegistry.sol";
import "./NodeRegistry.sol";
import "./InferenceHub.sol";
import "./OptimisticHub.sol";
import "./ReceiptCourt.sol";

/// @title Creates OptimisticHubs (its own contract: the hub's code does not fit in the deployer's)
/// @notice Stateless and powerless: anyone may create a hub; the instance a VerityDeployer creates is the
///         one it wires, and the hub's `wirer` is whoever asked for it.
contract OptimisticFactory {
    function create(
        ModelRegistry models,
        NodeRegistry nodes,
        VerityDeployer.Optimistic calldata o
    ) external returns (OptimisticHub) {
        return new OptimisticHub(
            models,
            nodes,
            o.oneStep,
            o.responseBlocks,
            o.challengeBlocks,
            o.moveBlocks,
            o.commitBond,
            o.challengeBond,
            o.slashAmount,
            msg.sender
        );
    }
}

/// @title Deploys and wires Verity's contracts in one transaction
/// @notice The node registry lets only the two hubs and the receipt court slash, wired here in the same
///         transaction; this factory keeps no power afterwards, and neither does anyone else. `OneStep`
///         (stateless) and the `OptimisticFactory` are deployed on their own beforehand: with them inside,
///         this factory's init code would pass the EVM's limit.
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
    ReceiptCourt public immutable court;

    constructor(
        uint256 minStake,
        uint64 unbondingDelay,
        uint64 responseWindow,
        uint256 timeoutPenalty,
        Optimistic memory o,
        OptimisticFactory factory
    ) {
        models = new ModelRegistry();
        nodes = new NodeRegistry(minStake, unbondingDelay);
        hub = new InferenceHub(models, nodes, responseWindow, timeoutPenalty);
        court = new ReceiptCourt(models, nodes, hub.domainSeparator());
        optimistic = factory.create(models, nodes, o);
        optimistic.wireCourt(address(court));
        court.wire(optimistic);
        address[] memory slashers = new address[](3);
        slashers[0] = address(hub);
        slashers[1] = address(optimistic);
        slashers[2] = address(court);
        nodes.wireSlashers(slashers);
    }
}
