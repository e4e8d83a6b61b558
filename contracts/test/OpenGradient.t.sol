// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/Test.sol";
import "../src/VerityDeployer.sol";
import "../src/compat/OpenGradient.sol";

contract OpenGradientTest is Test {
    VerityDeployer d;
    InferenceHub hub;
    ModelRegistry models;
    NodeRegistry nodes;
    OpenGradientInference og;
    bytes32 constant MODEL = keccak256("model");
    uint256[3] keys = [uint256(0xB1), 0xB2, 0xB3];
    address user = address(0x05E7);
    address owner = address(0x0EE);

    function setUp() public {
        d = new VerityDeployer(
            1 ether, 1 days, 1 hours, 0.5 ether, VerityDeployer.Optimistic(new OneStep(), 20, 10, 5, 0.1 ether, 0.1 ether, 0.5 ether),
            new OptimisticFactory()
        );
        hub = d.hub();
        models = d.models();
        nodes = d.nodes();
        og = new OpenGradientInference(hub, 2);
        vm.etch(address(0xF4), address(new OpenGradientEvents()).code);
        vm.prank(owner);
        models.register(MODEL, "mlp", "1.0.0", bytes32(0), 0.01 ether);
        for (uint256 i = 0; i < keys.length; i++) {
            address n = vm.addr(keys[i]);
            vm.deal(n, 10 ether);
            vm.prank(n);
            nodes.register{value: 2 ether}("http://node");
        }
        vm.deal(user, 10 ether);
    }

    function input() internal pure returns (ModelInput memory m) {
        m.numbers = new TensorLib.MultiDimensionalNumberTensor[](1);
        m.numbers[0].name = "x";
        m.numbers[0].values = new TensorLib.Number[](2);
        m.numbers[0].values[0] = TensorLib.Number(15, 1);
        m.numbers[0].values[1] = TensorLib.Number(-2, 0);
        m.numbers[0].shape = new uint32[](2);
        m.numbers[0].shape[0] = 1;
        m.numbers[0].shape[1] = 2;
    }

    function receipt(uint256 id, address node, bytes32 inp, bytes32 out)
        internal
        view
        returns (VerityReceipts.Receipt memory r, bytes memory sig)
    {
        r = VerityReceipts.Receipt(bytes32(id), MODEL, inp, out, keccak256("trace"), node, uint64(block.timestamp));
        uint256 key;
        for (uint256 i = 0; i < keys.length; i++) {
            if (vm.addr(keys[i]) == node) key = keys[i];
        }
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, VerityReceipts.digest(r, hub.domainSeparator()));
        sig = abi.encodePacked(rr, s, v);
    }

    function test_run_makes_an_unbound_signed_request_and_announces_it_at_F4() public {
        vm.prank(user);
        og.deposit{value: 1 ether}();
        vm.recordLogs();
        vm.prank(user);
        ModelOutput memory out = og.run("mlp@1.0.0", ModelInferenceMode.VANILLA, input());
        assertEq(out.numbers.length, 0, "the output comes later, from a node");
        InferenceHub.Request memory r = hub.getRequest(1);
        assertEq(r.modelId, MODEL, "model resolved from name@version");
        assertEq(r.inputHash, bytes32(0), "input hash left to the receipts");
        assertTrue(r.mode == InferenceHub.Mode.Signed, "VANILLA is signed");
        assertTrue(keccak256(bytes(r.inputUri)) == keccak256("opengradient:1"), "input URI names the inference ID");
        assertEq(og.deposits(user), 0.99 ether, "the price came out of the deposit");
        assertEq(og.requester(1), user, "requester recorded");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        bool announced;
        bool result;
        for (uint256 i = 0; i < logs.length; i++) {
            if (logs[i].emitter == address(0xF4) && logs[i].topics[0] == OpenGradientEvents.ModelInferenceEvent.selector) {
                (string memory infId, ModelInferenceRequest memory req,) =
                    abi.decode(logs[i].data, (string, ModelInferenceRequest, ModelOutput));
                assertTrue(keccak256(bytes(infId)) == keccak256("1"), "inference ID is the request ID");
                assertEq(uint256(int256(req.input.numbers[0].values[0].value)), 15, "input carried in the event");
                announced = true;
            }
            if (logs[i].emitter == address(og) && logs[i].topics[0] == OpenGradientInference.InferenceResult.selector) {
                result = true;
            }
        }
        assertTrue(announced && result, "both events the SDK reads are there");
    }

    function test_model_forms_funds_and_modes() public {
        vm.startPrank(user);
        vm.expectRevert(abi.encodeWithSelector(OpenGradientInference.UnknownModel.selector, "nope"));
        og.run("nope", ModelInferenceMode.VANILLA, input());
        vm.expectRevert(abi.encodeWithSelector(OpenGradientInference.InsufficientFunds.selector, 0.01 ether, 0));
        og.run("mlp", ModelInferenceMode.VANILLA, input());
        vm.expectRevert();
        og.run{value: 1 ether}(
            "0x4f8b2ac4a5d7b4a3e1a0c0f7d0d3cf4f7c1c3c9b8a7e6d5c4b3a2918070605fg", ModelInferenceMode.VANILLA, input()
        );
        vm.stopPrank();
        // Paying with the call works, by hex model ID (either case) too.
        vm.prank(owner);
        models.register(
            bytes32(0x4f8b2ac4a5d7b4a3e1a0c0f7d0d3cf4f7c1c3c9b8a7e6d5c4b3a2918070605ff), "mlp", "2.0.0", bytes32(0), 1
        );
        vm.prank(user);
        og.run{value: 2}("0x4F8B2AC4A5D7B4A3E1A0C0F7D0D3CF4F7C1C3C9B8A7E6D5C4B3A2918070605FF", ModelInferenceMode.TEE, input());
        InferenceHub.Request memory r = hub.getRequest(1);
        assertEq(r.modelId, bytes32(0x4f8b2ac4a5d7b4a3e1a0c0f7d0d3cf4f7c1c3c9b8a7e6d5c4b3a2918070605ff), "hex ID");
        assertTrue(r.mode == InferenceHub.Mode.Quorum, "TEE is a quorum");
        assertEq(r.fee, 2, "price times k");
        assertEq(og.deposits(user), 0, "exact fee, no change");
    }

    function test_quorum_on_unbound_input_needs_agreement_on_input_and_output() public {
        vm.prank(user);
        og.run{value: 0.02 ether}("mlp", ModelInferenceMode.ZK, input());
        vm.roll(block.number + 2);
        InferenceHub.Request memory r = hub.getRequest(1);
        assertTrue(r.mode == InferenceHub.Mode.Quorum && r.k == 2, "ZK is a quorum of 2");
        address[] memory a = hub.assignment(1);
        (VerityReceipts.Receipt memory r0, bytes memory s0) = receipt(1, a[0], keccak256("in"), keccak256("out"));
        hub.submit(1, r0, s0);
        (VerityReceipts.Receipt memory r1, bytes memory s1) = receipt(1, a[1], keccak256("other in"), keccak256("out"));
        hub.submit(1, r1, s1);
        assertTrue(hub.getRequest(1).status == InferenceHub.Status.Pending, "same output from another input is no quorum");
        (VerityReceipts.Receipt memory r2, bytes memory s2) = receipt(1, a[2], keccak256("in"), keccak256("out"));
        hub.submit(1, r2, s2);
        r = hub.getRequest(1);
        assertTrue(r.status == InferenceHub.Status.Finalized, "finalized");
        assertEq(r.inputHash, keccak256("in"), "the agreed input hash is recorded");
        assertEq(og.outputOf(1), keccak256("out"), "the callback reached the front door");
    }

    function test_timed_out_requests_credit_the_requester() public {
        vm.prank(user);
        og.run{value: 0.05 ether}("mlp", ModelInferenceMode.VANILLA, input());
        assertEq(og.deposits(user), 0.04 ether, "change kept as deposit");
        vm.expectRevert(InferenceHub.TooEarly.selector);
        og.reclaim(1);
        vm.roll(block.number + 2);
        vm.warp(block.timestamp + 2 hours);
        og.reclaim(1);
        assertEq(og.deposits(user), 0.04 ether + 0.01 ether, "the fee comes back, the penalty is burned");
        vm.expectRevert(OpenGradientInference.NotRefunded.selector);
        og.reclaim(1);
        uint256 before = user.balance;
        vm.prank(user);
        og.withdraw();
        assertEq(user.balance - before, 0.05 ether, "withdrawn");
    }
}
