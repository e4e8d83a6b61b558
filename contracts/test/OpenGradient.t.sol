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
    /// The canonical hash of x = [1.5, −2] at scale 4 ([24, −32]); the same constant is checked in Rust
    /// (`the_front_doors_input_hash_golden`).
    bytes32 constant INPUT_HASH = 0x0ed35ea413063455e485fdafb3b373be31f93d7a6c3041621d8cb39a7ec66369;

    function setUp() public {
        d = new VerityDeployer(
            1 ether,
            1 days,
            1 hours,
            0.5 ether,
            VerityDeployer.Optimistic(new OneStep(), 20, 10, 5, 0.1 ether, 0.1 ether, 0.5 ether),
            new OptimisticFactory()
        );
        hub = d.hub();
        models = d.models();
        nodes = d.nodes();
        og = new OpenGradientInference(hub, 2);
        vm.etch(address(0xF4), address(new OpenGradientEvents()).code);
        vm.prank(owner);
        models.register(MODEL, "mlp", "1.0.0", bytes32(0), 0.01 ether);
        spec(MODEL, "x", 2, 4);
        for (uint256 i = 0; i < keys.length; i++) {
            address n = vm.addr(keys[i]);
            vm.deal(n, 10 ether);
            vm.prank(n);
            nodes.register{value: 2 ether}("http://node");
        }
        vm.deal(user, 10 ether);
    }

    /// The owner states a one-input spec for `id`.
    function spec(bytes32 id, string memory name, uint64 count, int8 scale) internal {
        string[] memory names = new string[](1);
        names[0] = name;
        uint64[] memory counts = new uint64[](1);
        counts[0] = count;
        int8[] memory scales = new int8[](1);
        scales[0] = scale;
        bool[] memory ints = new bool[](1);
        vm.prank(owner);
        og.setInputSpec(id, names, counts, scales, ints);
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

    function test_run_makes_a_signed_request_for_the_inputs_canonical_hash_and_announces_it_at_F4() public {
        vm.prank(user);
        og.deposit{value: 1 ether}();
        vm.recordLogs();
        vm.prank(user);
        ModelOutput memory out = og.run("mlp@1.0.0", ModelInferenceMode.VANILLA, input());
        assertEq(out.numbers.length, 0, "the output comes later, from a node");
        InferenceHub.Request memory r = hub.getRequest(1);
        assertEq(r.modelId, MODEL, "model resolved from name@version");
        assertEq(r.inputHash, INPUT_HASH, "the contract fixed the canonical input hash");
        assertTrue(r.mode == InferenceHub.Mode.Signed, "VANILLA is signed");
        assertTrue(keccak256(bytes(r.inputUri)) == keccak256("opengradient:1"), "input URI names the inference ID");
        assertEq(og.deposits(user), 0.99 ether, "the price came out of the deposit");
        assertEq(og.requester(1), user, "requester recorded");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        bool announced;
        bool result;
        for (uint256 i = 0; i < logs.length; i++) {
            if (
                logs[i].emitter == address(0xF4) && logs[i].topics[0] == OpenGradientEvents.ModelInferenceEvent.selector
            ) {
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
        vm.expectRevert(
            bytes(
                "OpenGradientInference: unknown model 'nope' (no such model ID, name@version or name in the ModelRegistry)"
            )
        );
        og.run("nope", ModelInferenceMode.VANILLA, input());
        vm.expectRevert(
            bytes("OpenGradientInference: the fee is 10000000000000000 wei but only 0 wei was sent or deposited")
        );
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
        vm.expectRevert(
            bytes(
                "OpenGradientInference: the model's inputs are not stated yet (its owner states them with setInputSpec, which `verity model register` does)"
            )
        );
        og.run{value: 2}("mlp@2.0.0", ModelInferenceMode.TEE, input());
        spec(bytes32(0x4f8b2ac4a5d7b4a3e1a0c0f7d0d3cf4f7c1c3c9b8a7e6d5c4b3a2918070605ff), "x", 2, 4);
        vm.prank(user);
        og.run{value: 2}(
            "0x4F8B2AC4A5D7B4A3E1A0C0F7D0D3CF4F7C1C3C9B8A7E6D5C4B3A2918070605FF", ModelInferenceMode.TEE, input()
        );
        InferenceHub.Request memory r = hub.getRequest(1);
        assertEq(r.modelId, bytes32(0x4f8b2ac4a5d7b4a3e1a0c0f7d0d3cf4f7c1c3c9b8a7e6d5c4b3a2918070605ff), "hex ID");
        assertTrue(r.mode == InferenceHub.Mode.Quorum, "TEE is a quorum");
        assertEq(r.fee, 2, "price times k");
        assertEq(og.deposits(user), 0, "exact fee, no change");
    }

    function test_receipts_must_name_the_fixed_input_and_a_quorum_agree_on_the_output() public {
        vm.prank(user);
        og.run{value: 0.02 ether}("mlp", ModelInferenceMode.ZK, input());
        vm.roll(block.number + 2);
        InferenceHub.Request memory r = hub.getRequest(1);
        assertTrue(r.mode == InferenceHub.Mode.Quorum && r.k == 2, "ZK is a quorum of 2");
        address[] memory a = hub.assignment(1);
        // a node naming another input than the one in the transaction is refused outright
        (VerityReceipts.Receipt memory bad, bytes memory sb) = receipt(1, a[0], keccak256("other in"), keccak256("out"));
        vm.expectRevert(InferenceHub.WrongRequest.selector);
        hub.submit(1, bad, sb);
        (VerityReceipts.Receipt memory r0, bytes memory s0) = receipt(1, a[0], INPUT_HASH, keccak256("out"));
        hub.submit(1, r0, s0);
        (VerityReceipts.Receipt memory r1, bytes memory s1) = receipt(1, a[1], INPUT_HASH, keccak256("other out"));
        hub.submit(1, r1, s1);
        assertTrue(hub.getRequest(1).status == InferenceHub.Status.Pending, "two outputs are no quorum");
        (VerityReceipts.Receipt memory r2, bytes memory s2) = receipt(1, a[2], INPUT_HASH, keccak256("out"));
        hub.submit(1, r2, s2);
        r = hub.getRequest(1);
        assertTrue(r.status == InferenceHub.Status.Finalized, "finalized");
        assertEq(r.inputHash, INPUT_HASH, "the fixed input hash");
        assertEq(og.outputOf(1), keccak256("out"), "the callback reached the front door");
    }

    /// The exact quantization equals the Rust node's (`quantize_decimal`) on the vectors it pins, and a
    /// two-input model's hash (inputs given out of order, an integer input, a value float32 rounds)
    /// equals `the_front_doors_input_hash_golden`.
    function test_quantization_and_input_hash_equal_the_nodes() public {
        assertEq(int256(og.quantize(15, 1, 0, false)), 2, "1.5 rounds up");
        assertEq(int256(og.quantize(-15, 1, 0, false)), -1, "-1.5 rounds up too");
        assertEq(int256(og.quantize(-26, 1, 0, false)), -3, "-2.6");
        assertEq(int256(og.quantize(-5, 1, 0, false)), 0, "-0.5");
        assertEq(int256(og.quantize(3, 0, -1, false)), 2, "negative scale");
        assertEq(int256(og.quantize(10229994, 4, 16, false)), 67043288, "float32 rounding first");
        assertEq(int256(og.quantize(-26, 1, 16, false)), -170394, "-2.6 at scale 16");
        assertEq(int256(og.quantize(-int128(2147483648), 0, 0, false)), type(int32).min, "-2^31 is a real value");
        assertEq(int256(og.quantize(-7000, 3, 5, true)), -7, "integer input");
        assertEq(int256(og.quantize(type(int128).max, 60, 64, false)), 0, "huge numerator and denominator");
        assertEq(int256(og.quantize(type(int128).min, 38, 0, false)), -2, "-1.70141");
        assertEq(int256(og.quantize(1, 60, 64, false)), 0, "below every float32");
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "out of the 32-bit range")));
        og.quantize(2147483648, 0, 0, false);
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "out of the 32-bit range")));
        og.quantize(-2147483648, 0, 0, true);
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "not a whole number")));
        og.quantize(7001, 3, 0, true);
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "decimals out of 0..60")));
        og.quantize(1, 61, 0, false);
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "scale out of -32..64")));
        og.quantize(1, 0, 65, false);

        bytes32 two = keccak256("two inputs");
        vm.prank(owner);
        models.register(two, "two", "1.0.0", bytes32(0), 1);
        string[] memory names = new string[](2);
        names[0] = "x";
        names[1] = "ids";
        uint64[] memory counts = new uint64[](2);
        counts[0] = 3;
        counts[1] = 2;
        int8[] memory scales = new int8[](2);
        scales[0] = 16;
        bool[] memory ints = new bool[](2);
        ints[1] = true;
        vm.expectRevert(OpenGradientInference.NotModelOwner.selector);
        og.setInputSpec(two, names, counts, scales, ints);
        vm.prank(owner);
        og.setInputSpec(two, names, counts, scales, ints);
        ModelInput memory m;
        m.numbers = new TensorLib.MultiDimensionalNumberTensor[](2);
        m.numbers[0].name = "ids";
        m.numbers[0].values = new TensorLib.Number[](2);
        m.numbers[0].values[0] = TensorLib.Number(7000, 3);
        m.numbers[0].values[1] = TensorLib.Number(-12, 0);
        m.numbers[0].shape = new uint32[](1);
        m.numbers[0].shape[0] = 2;
        m.numbers[1].name = "x";
        m.numbers[1].values = new TensorLib.Number[](3);
        m.numbers[1].values[0] = TensorLib.Number(10229994, 4);
        m.numbers[1].values[1] = TensorLib.Number(-26, 1);
        m.numbers[1].values[2] = TensorLib.Number(15, 1);
        m.numbers[1].shape = new uint32[](1);
        m.numbers[1].shape[0] = 3;
        assertEq(
            og.canonicalInputHash(two, m),
            0x8692c3f8c94f9ebcf58665523e7975284dbfcd31668a519f185189734dcba067,
            "the node's hash of the same input"
        );
        m.numbers[1].name = "y";
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "a model input is missing")));
        og.canonicalInputHash(two, m);
        m.numbers[1].name = "x";
        m.numbers[1].values = new TensorLib.Number[](2);
        vm.expectRevert(
            bytes(string.concat("OpenGradientInference: bad input: ", "an input has the wrong number of elements"))
        );
        og.canonicalInputHash(two, m);
        vm.expectRevert(bytes(string.concat("OpenGradientInference: bad input: ", "not one tensor per model input")));
        og.canonicalInputHash(MODEL, m);
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
