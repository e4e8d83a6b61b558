// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/HubFixture.sol";

contract Consumer is IVerityConsumer {
    uint256 public lastId;
    bytes32 public lastOutput;

    function ask(InferenceHub hub, bytes32 model) external payable returns (uint256) {
        return hub.request{value: msg.value}(model, keccak256("in"), "ipfs://in", InferenceHub.Mode.Signed, 1);
    }

    function onVerityResult(uint256 id, bytes32 out) external {
        lastId = id;
        lastOutput = out;
    }
}

contract InferenceHubTest is HubFixture {
    function test_signed_mode_finalizes_on_one_receipt_and_pays() public {
        uint256 id = ask(InferenceHub.Mode.Signed, 0, 0.05 ether);
        address[] memory a = hub.assignment(id);
        assertEq(a.length, 1, "one node assigned");
        uint256 ownerBefore = owner.balance;
        uint256 nodeBefore = a[0].balance;
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, a[0], keccak256("out"));
        hub.submit(id, r, sig);
        InferenceHub.Request memory q = hub.getRequest(id);
        assertTrue(q.status == InferenceHub.Status.Finalized, "finalized");
        assertEq(q.outputHash, keccak256("out"), "output");
        assertEq(owner.balance - ownerBefore, 0.01 ether, "model owner paid the price");
        assertEq(a[0].balance - nodeBefore, 0.04 ether, "node paid the rest");
        assertEq(address(hub).balance, 0, "nothing left in the hub");
    }

    function test_a_certificate_finalizes_in_one_transaction() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 3, 0.03 ether);
        address[] memory a = hub.assignment(id);
        VerityReceipts.Receipt[] memory rs = new VerityReceipts.Receipt[](5);
        bytes[] memory ss = new bytes[](5);
        (rs[0], ss[0]) = receipt(id, a[0], keccak256("good"));
        (rs[1], ss[1]) = receipt(id, a[1], keccak256("bad"));
        (rs[2], ss[2]) = receipt(id, a[2], keccak256("good"));
        (rs[3], ss[3]) = receipt(id, a[3], keccak256("good"));
        (rs[4], ss[4]) = receipt(id, a[4], keccak256("good"));
        vm.expectRevert(InferenceHub.WrongRequest.selector);
        hub.submitAll(id, rs, new bytes[](4));
        // A forged receipt in the batch reverts the whole batch.
        bytes memory keep = ss[2];
        ss[2] = ss[0];
        vm.expectRevert(InferenceHub.BadSignature.selector);
        hub.submitAll(id, rs, ss);
        ss[2] = keep;
        // A node that already sent its own receipt is skipped, not refused.
        hub.submit(id, rs[0], ss[0]);
        hub.submitAll(id, rs, ss);
        InferenceHub.Request memory q = hub.getRequest(id);
        assertTrue(q.status == InferenceHub.Status.Finalized, "finalized by the batch");
        assertEq(q.outputHash, keccak256("good"), "the agreed output");
        assertEq(hub.submitted(id, a[1]), keccak256("bad"), "the dissent is kept as evidence");
        assertEq(hub.submitted(id, a[4]), bytes32(0), "receipts after finality are ignored");
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.submitAll(id, rs, ss);
    }

    function test_quorum_needs_k_matching_receipts_and_records_conflicts() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 3, 0.03 ether);
        address[] memory a = hub.assignment(id);
        assertEq(a.length, 5, "k + 2 assigned");
        (VerityReceipts.Receipt memory r0, bytes memory s0) = receipt(id, a[0], keccak256("good"));
        hub.submit(id, r0, s0);
        (VerityReceipts.Receipt memory r1, bytes memory s1) = receipt(id, a[1], keccak256("bad"));
        hub.submit(id, r1, s1);
        (VerityReceipts.Receipt memory r2, bytes memory s2) = receipt(id, a[2], keccak256("good"));
        hub.submit(id, r2, s2);
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Pending, "2 of 3 is not enough");
        assertEq(hub.votes(id, keccak256(abi.encodePacked(INPUT, keccak256("bad")))), 1, "the lie is recorded");
        assertEq(hub.submitted(id, a[1]), keccak256("bad"), "the lying receipt stays in storage");
        (VerityReceipts.Receipt memory r3, bytes memory s3) = receipt(id, a[3], keccak256("good"));
        hub.submit(id, r3, s3);
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "finalized at 3");
        assertEq(hub.getRequest(id).outputHash, keccak256("good"), "the agreed output");
    }

    function test_receipts_are_checked() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.02 ether);
        address[] memory a = hub.assignment(id);
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, a[0], keccak256("o"));
        // Forged field (a copy: memory structs are references).
        (VerityReceipts.Receipt memory f,) = receipt(id, a[0], keccak256("o"));
        f.outputHash = keccak256("other");
        vm.expectRevert(InferenceHub.BadSignature.selector);
        hub.submit(id, f, sig);
        // Another request's receipt.
        uint256 id2 = ask(InferenceHub.Mode.Signed, 0, 0.01 ether);
        vm.expectRevert(InferenceHub.WrongRequest.selector);
        hub.submit(id2, r, sig);
        // Twice from the same node.
        hub.submit(id, r, sig);
        vm.expectRevert(InferenceHub.AlreadySubmitted.selector);
        hub.submit(id, r, sig);
        // A registered node that is not assigned (5 nodes, 4 assigned for k = 2).
        address outsider;
        for (uint256 i = 0; i < keys.length; i++) {
            if (!hub.isAssigned(id, vm.addr(keys[i]))) outsider = vm.addr(keys[i]);
        }
        (VerityReceipts.Receipt memory ro, bytes memory so) = receipt(id, outsider, keccak256("o"));
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotAssigned.selector, outsider));
        hub.submit(id, ro, so);
    }

    function test_fee_mode_and_seed_rules() public {
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.FeeTooLow.selector, 0.03 ether));
        hub.request{value: 0.02 ether}(MODEL, INPUT, "", InferenceHub.Mode.Quorum, 3);
        vm.prank(client);
        vm.expectRevert(InferenceHub.BadMode.selector);
        hub.request{value: 1 ether}(MODEL, INPUT, "", InferenceHub.Mode.Quorum, 8);
        vm.prank(client);
        vm.expectRevert(InferenceHub.UnknownModel.selector);
        hub.request{value: 1 ether}(keccak256("nope"), INPUT, "", InferenceHub.Mode.Signed, 1);
        vm.prank(client);
        uint256 id = hub.request{value: 0.01 ether}(MODEL, INPUT, "", InferenceHub.Mode.Signed, 1);
        vm.expectRevert(abi.encodeWithSelector(Assignment.SeedNotReady.selector, uint64(block.number + 1)));
        hub.assignment(id);
    }

    function test_timeout_refunds_and_slashes_silent_nodes() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.02 ether);
        address[] memory a = hub.assignment(id);
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, a[0], keccak256("o"));
        hub.submit(id, r, sig);
        vm.expectRevert(InferenceHub.TooEarly.selector);
        hub.timeout(id);
        vm.warp(block.timestamp + 1 hours + 1);
        uint256 before = client.balance;
        uint256 silentStake = nodes.stakeOf(a[1]);
        uint256 answeredStake = nodes.stakeOf(a[0]);
        hub.timeout(id);
        assertEq(client.balance - before, 0.02 ether, "the client gets its fee back, nothing more");
        assertEq(nodes.stakeOf(a[1]), silentStake - 0.5 ether, "silent primary node slashed");
        assertEq(hub.burned(), 0.5 ether, "the penalty is burned");
        assertEq(nodes.stakeOf(a[0]), answeredStake, "the node that answered keeps its stake");
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.timeout(id);
        (VerityReceipts.Receipt memory late, bytes memory ls) = receipt(id, a[1], keccak256("o"));
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.submit(id, late, ls);
    }

    function test_a_consumer_contract_gets_a_callback() public {
        Consumer c = new Consumer();
        vm.deal(address(this), 1 ether);
        uint256 id = c.ask{value: 0.01 ether}(hub, MODEL);
        vm.roll(block.number + 2);
        address[] memory a = hub.assignment(id);
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, a[0], keccak256("o"));
        r.inputHash = keccak256("in");
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(keyOf(a[0]), VerityReceipts.digest(r, hub.domainSeparator()));
        sig = abi.encodePacked(rr, s, v);
        hub.submit(id, r, sig);
        assertEq(c.lastId(), id, "callback id");
        assertEq(c.lastOutput(), keccak256("o"), "callback output");
    }

    function test_assignment_is_stake_weighted_and_distinct() public {
        // Over many requests, the node with 5x the stake of the smallest is assigned more often.
        uint256[5] memory hits;
        for (uint256 j = 0; j < 60; j++) {
            uint256 id = ask(InferenceHub.Mode.Signed, 0, 0.01 ether);
            address a = hub.assignment(id)[0];
            for (uint256 i = 0; i < keys.length; i++) {
                if (vm.addr(keys[i]) == a) hits[i]++;
            }
        }
        assertTrue(hits[4] > hits[0], "more stake, more assignments");
        uint256 id2 = ask(InferenceHub.Mode.Quorum, 3, 0.03 ether);
        address[] memory q = hub.assignment(id2);
        for (uint256 i = 0; i < q.length; i++) {
            for (uint256 j = i + 1; j < q.length; j++) {
                assertTrue(q[i] != q[j], "distinct nodes");
            }
        }
    }

    function test_nobody_can_slash_through_the_registry_directly() public {
        vm.expectRevert(NodeRegistry.NotSlasher.selector);
        nodes.slash(vm.addr(keys[0]), 1 ether);
        address[] memory s = new address[](1);
        s[0] = address(this);
        vm.expectRevert(NodeRegistry.NotWirer.selector);
        nodes.wireSlashers(s);
    }
}
