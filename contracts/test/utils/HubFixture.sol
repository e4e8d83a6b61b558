// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./Test.sol";
import "../../src/VerityDeployer.sol";

/// A deployed hub with one model (price 0.01 ETH, owner `owner`) and five staked nodes (1..5 ETH) whose
/// keys sign receipts.
abstract contract HubFixture is Test {
    VerityDeployer d;
    InferenceHub hub;
    NodeRegistry nodes;
    ModelRegistry models;
    bytes32 constant MODEL = keccak256("model");
    bytes32 constant INPUT = keccak256("input");
    uint256[5] keys = [uint256(0xA1), 0xA2, 0xA3, 0xA4, 0xA5];
    address client = address(0xC11E);
    address owner = address(0x0EE);

    function setUp() public {
        d = new VerityDeployer(
            1 ether, 1 days, 1 hours, 0.5 ether, VerityDeployer.Optimistic(new OneStep(), 20, 10, 5, 0.1 ether, 0.1 ether, 0.5 ether),
            new OptimisticFactory()
        );
        hub = d.hub();
        nodes = d.nodes();
        models = d.models();
        vm.prank(owner);
        models.register(MODEL, "mlp", "1", bytes32(0), 0.01 ether);
        for (uint256 i = 0; i < keys.length; i++) {
            address n = vm.addr(keys[i]);
            vm.deal(n, 10 ether);
            vm.prank(n);
            nodes.register{value: 1 ether + i * 1 ether}("http://node");
        }
        vm.deal(client, 10 ether);
    }

    function keyOf(address n) internal view returns (uint256) {
        for (uint256 i = 0; i < keys.length; i++) {
            if (vm.addr(keys[i]) == n) return keys[i];
        }
        revert("no key");
    }

    function signAs(uint256 key, VerityReceipts.Receipt memory r, bytes32 domain) internal pure returns (bytes memory) {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, VerityReceipts.digest(r, domain));
        return abi.encodePacked(rr, s, v);
    }

    /// A receipt of `node` for `requestId`, input `input` and output `out`, signed under `domain`.
    function signedReceipt(bytes32 requestId, address node, bytes32 input, bytes32 out, bytes32 domain)
        internal
        view
        returns (VerityReceipts.Receipt memory r, bytes memory sig)
    {
        r = VerityReceipts.Receipt({
            requestId: requestId,
            modelId: MODEL,
            inputHash: input,
            outputHash: out,
            traceRoot: keccak256(abi.encodePacked(out)),
            node: node,
            timestamp: uint64(block.timestamp)
        });
        sig = signAs(keyOf(node), r, domain);
    }

    /// `node`'s hub receipt for request `id` with output `out`.
    function receipt(uint256 id, address node, bytes32 out)
        internal
        view
        returns (VerityReceipts.Receipt memory r, bytes memory sig)
    {
        return signedReceipt(bytes32(id), node, INPUT, out, hub.domainSeparator());
    }

    function ask(InferenceHub.Mode mode, uint8 k, uint256 fee) internal returns (uint256 id) {
        vm.prank(client);
        id = hub.request{value: fee}(MODEL, INPUT, "http://inputs/1", mode, k);
        vm.roll(block.number + 2);
    }

}
