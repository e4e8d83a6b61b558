// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/HubFixture.sol";

/// The attacks of docs/spec/economics.md, played against the contracts: each test is the attacker's move
/// and asserts that the attacker gains nothing and honest nodes keep their stake. (Games with real traces,
/// and the same attacks against real nodes, run on anvil in crates/cli/tests/it/adversarial.rs.)
contract AdversarialTest is HubFixture {
    address attacker = address(0xA77AC);

    function askAs(address who, bytes32 input, InferenceHub.Mode mode, uint8 k, uint256 fee)
        internal
        returns (uint256 id)
    {
        vm.prank(who);
        id = hub.request{value: fee}(MODEL, input, "http://inputs/unavailable", mode, k);
        vm.roll(block.number + 2);
    }

    function totalStake() internal view returns (uint256 t) {
        for (uint256 i = 0; i < keys.length; i++) {
            t += nodes.stakeOf(vm.addr(keys[i]));
        }
    }

    // ------------------------------------------------------------------ no profit from failure

    /// A requester whose input honest nodes cannot serve (its hash does not match, or it is not there):
    /// they decline, the requester gets its fee back and nothing more, and nobody loses stake.
    function test_a_requester_gains_nothing_from_a_request_nodes_cannot_serve() public {
        uint256 stakes = totalStake();
        vm.deal(attacker, 1 ether);
        uint256 start = attacker.balance;
        for (uint256 round = 0; round < 3; round++) {
            uint256 id = askAs(attacker, keccak256(abi.encode("no such input", round)), InferenceHub.Mode.Quorum, 2, 0.02 ether);
            address[] memory a = hub.assignment(id);
            for (uint256 i = 0; i < a.length; i++) {
                if (hub.getRequest(id).status != InferenceHub.Status.Pending) break;
                vm.prank(a[i]);
                hub.decline(id, "input_mismatch");
            }
            assertTrue(hub.getRequest(id).status == InferenceHub.Status.Refunded, "refunded once too few remain");
            vm.warp(block.timestamp + 2 hours);
            vm.expectRevert(InferenceHub.NotPending.selector);
            hub.timeout(id);
        }
        assertLe(attacker.balance, start, "the attacker's balance does not grow");
        assertEq(totalStake(), stakes, "honest nodes keep their stake");
    }

    /// Even when a node stays silent, the timeout pays the requester its fee only: the penalty is burned.
    function test_a_timeout_pays_the_requester_its_fee_only() public {
        vm.deal(attacker, 1 ether);
        uint256 start = attacker.balance;
        uint256 id = askAs(attacker, INPUT, InferenceHub.Mode.Signed, 1, 0.01 ether);
        address n = hub.assignment(id)[0];
        uint256 s = nodes.stakeOf(n);
        vm.warp(block.timestamp + 2 hours);
        hub.timeout(id);
        assertEq(attacker.balance, start, "fee back, no penalty to the requester");
        assertEq(nodes.stakeOf(n), s - 0.5 ether, "the silent node is slashed");
        assertEq(hub.burned(), 0.5 ether, "and its penalty burned");
    }

    /// A decline is open only to assigned nodes, once, before the deadline, and never after a receipt.
    function test_decline_rules() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.02 ether);
        address[] memory a = hub.assignment(id);
        address outsider;
        for (uint256 i = 0; i < keys.length; i++) {
            address n = vm.addr(keys[i]);
            bool inA;
            for (uint256 j = 0; j < a.length; j++) {
                if (a[j] == n) inA = true;
            }
            if (!inA) outsider = n;
        }
        vm.prank(outsider);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotAssigned.selector, outsider));
        hub.decline(id, "x");
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, a[0], keccak256("o"));
        hub.submit(id, r, sig);
        vm.prank(a[0]);
        vm.expectRevert(InferenceHub.AlreadySubmitted.selector);
        hub.decline(id, "x");
        vm.prank(a[1]);
        hub.decline(id, "input_unavailable");
        vm.prank(a[1]);
        vm.expectRevert(InferenceHub.AlreadyDeclined.selector);
        hub.decline(id, "x");
        (r, sig) = receipt(id, a[1], keccak256("o"));
        vm.expectRevert(InferenceHub.AlreadyDeclined.selector);
        hub.submit(id, r, sig);
        // the spare takes the declined node's place: at the timeout the silent spare is the one slashed
        uint256 s2 = nodes.stakeOf(a[2]);
        uint256 s1 = nodes.stakeOf(a[1]);
        vm.warp(block.timestamp + 2 hours);
        vm.prank(a[2]);
        vm.expectRevert(InferenceHub.TooLate.selector);
        hub.decline(id, "x");
        hub.timeout(id);
        assertEq(nodes.stakeOf(a[1]), s1, "the declining node keeps its stake");
        assertEq(nodes.stakeOf(a[2]), s2 - 0.5 ether, "the silent spare that was needed is slashed");
    }

    // ------------------------------------------------------------------ stake snapshots

    /// After the seed is public, a node (or a requester steering a slash) tops up stake to change the
    /// draw: the assignment stays the one of the request's block, whatever the top-up.
    function test_a_stake_change_after_the_request_changes_no_assignment() public {
        uint256 id = ask(InferenceHub.Mode.Signed, 1, 0.01 ether);
        address drawn = hub.assignment(id)[0];
        for (uint256 i = 0; i < keys.length; i++) {
            address n = vm.addr(keys[i]);
            if (n == drawn) continue;
            // a short search over top-ups, as the attack did
            for (uint256 t = 1; t <= 20; t++) {
                vm.deal(n, n.balance + t * 0.01 ether);
                vm.prank(n);
                nodes.addStake{value: t * 0.01 ether}();
                assertEq(hub.assignment(id)[0], drawn, "a top-up does not move the draw");
            }
            vm.deal(n, n.balance + 1000 ether);
            vm.prank(n);
            nodes.addStake{value: 1000 ether}();
            assertEq(hub.assignment(id)[0], drawn, "nor does a huge one");
        }
        // the drawn node unbonding and a newcomer registering change nothing either
        uint256 all = nodes.stakeOf(drawn);
        vm.prank(drawn);
        nodes.requestUnbond(all);
        address late = vm.addr(0xB1);
        vm.deal(late, 100 ether);
        vm.prank(late);
        nodes.register{value: 50 ether}("http://late");
        assertEq(hub.assignment(id)[0], drawn, "assignment fixed at the request's block");
        // the drawn node's receipt still counts, and the rule is the same in the optimistic hub
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, drawn, keccak256("o"));
        hub.submit(id, r, sig);
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "finalized by the drawn node");
    }

    function test_stake_checkpoints() public {
        address n = vm.addr(keys[0]);
        uint256 b0 = block.number;
        assertEq(nodes.stakeAt(n, b0), 1 ether, "stake at registration");
        assertEq(nodes.stakeAt(n, b0 - 1), 0, "nothing before registration");
        vm.roll(b0 + 5);
        vm.prank(n);
        nodes.addStake{value: 2 ether}();
        vm.prank(n);
        nodes.addStake{value: 1 ether}(); // same block: one checkpoint
        vm.roll(b0 + 9);
        vm.prank(n);
        nodes.requestUnbond(0.5 ether);
        assertEq(nodes.stakeAt(n, b0 + 4), 1 ether, "before the top-ups");
        assertEq(nodes.stakeAt(n, b0 + 5), 4 ether, "both top-ups of one block");
        assertEq(nodes.stakeAt(n, b0 + 8), 4 ether, "until the unbonding");
        assertEq(nodes.stakeAt(n, b0 + 9), 3.5 ether, "after the unbonding");
        assertEq(nodes.stakeAt(n, b0 + 1000), 3.5 ether, "in the future");
        assertTrue(nodes.isActiveAt(n, b0) && !nodes.isActiveAt(n, b0 - 1), "active from registration");
    }

    // ------------------------------------------------------------------ seeds

    /// A seed stored on first use outlives blockhash's 256 blocks: late receipts and timeouts still work
    /// and a silent node can still be held to its assignment.
    function test_the_seed_survives_256_blocks() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.02 ether);
        address[] memory a = hub.assignment(id);
        hub.fixSeed(id);
        vm.roll(block.number + 300);
        assertEq(hub.assignment(id)[0], a[0], "same assignment 300 blocks later");
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, a[0], keccak256("o"));
        hub.submit(id, r, sig);
        uint256 s = nodes.stakeOf(a[1]);
        vm.warp(block.timestamp + 2 hours);
        hub.timeout(id);
        assertEq(nodes.stakeOf(a[1]), s - 0.5 ether, "the silent node is still slashable");
    }

    // ------------------------------------------------------------------ signatures and domains

    /// v in {0, 1} is the same signature as v in {27, 28}: only the latter is accepted.
    function test_one_signature_encoding() public {
        uint256 id = ask(InferenceHub.Mode.Signed, 1, 0.01 ether);
        address n = hub.assignment(id)[0];
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, n, keccak256("o"));
        bytes memory twin = bytes.concat(sig);
        twin[64] = bytes1(uint8(sig[64]) - 27);
        vm.expectRevert(InferenceHub.BadSignature.selector);
        hub.submit(id, r, twin);
        hub.submit(id, r, sig);
    }

    /// A receipt a node gives off-chain (its HTTP API, a quorum certificate) is signed under the court's
    /// domain and can never finalize a hub request, whatever request ID it names.
    function test_an_offchain_receipt_cannot_finalize_a_hub_request() public {
        uint256 id = ask(InferenceHub.Mode.Signed, 1, 0.01 ether);
        address n = hub.assignment(id)[0];
        (VerityReceipts.Receipt memory r,) = receipt(id, n, keccak256("chosen by a hijacker"));
        bytes memory off = signAs(keyOf(n), r, d.court().offchainDomain());
        vm.expectRevert(InferenceHub.BadSignature.selector);
        hub.submit(id, r, off);
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Pending, "still pending");
    }

    // ------------------------------------------------------------------ collateral

    function test_collateral_limits_the_draw_and_is_locked() public {
        vm.prank(client);
        uint256 id = hub.requestWithCollateral{value: 0.01 ether}(MODEL, INPUT, "u", InferenceHub.Mode.Signed, 1, 4 ether);
        vm.roll(block.number + 2);
        address n = hub.assignment(id)[0];
        assertGe(nodes.stakeOf(n), 4 ether, "only nodes whose stake covers the collateral are drawn");
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, n, keccak256("o"));
        hub.submit(id, r, sig);
        assertEq(nodes.locked(n), 4 ether, "the receipt locks the collateral");
        uint256 free = nodes.stakeOf(n) - 4 ether;
        vm.prank(n);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StakeLocked.selector, 4 ether));
        nodes.requestUnbond(free + 1);
        vm.prank(n);
        nodes.requestUnbond(free);
        // the lock ends after one to two unbonding delays
        vm.warp(block.timestamp + 2 days + 1);
        assertEq(nodes.locked(n), 0, "lock expired");
        // a node whose free stake does not cover a request's collateral cannot answer it: it declines
        vm.prank(client);
        uint256 id2 = hub.requestWithCollateral{value: 0.01 ether}(MODEL, INPUT, "u", InferenceHub.Mode.Signed, 1, 4 ether);
        vm.roll(block.number + 2);
        address m = hub.assignment(id2)[0];
        uint256 free2 = nodes.stakeOf(m) - nodes.locked(m);
        vm.prank(address(hub));
        nodes.lock(m, free2 - 4 ether + 1); // other answers hold all but 4 ether - 1 wei
        (r, sig) = receipt(id2, m, keccak256("o"));
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InsufficientFreeStake.selector, 4 ether - 1));
        hub.submit(id2, r, sig);
        vm.prank(m);
        hub.decline(id2, "collateral");
        assertTrue(hub.getRequest(id2).status == InferenceHub.Status.Refunded, "refunded on decline");
        // only the hubs lock
        vm.expectRevert(NodeRegistry.NotSlasher.selector);
        nodes.lock(m, 1);
    }

    // ------------------------------------------------------------------ every signed answer is slashable

    /// The input words of a one-tensor input [1, 2, …, 9] and its canonical hash as the Rust code computes
    /// it (golden vector: crates/chain/src/court.rs).
    function nineInput() internal pure returns (uint64[] memory lens, bytes32[][] memory words, bytes32 h) {
        lens = new uint64[](1);
        lens[0] = 9;
        words = new bytes32[][](1);
        words[0] = new bytes32[](2);
        words[0][0] = bytes32(
            abi.encodePacked(int32(1), int32(2), int32(3), int32(4), int32(5), int32(6), int32(7), int32(8))
        );
        words[0][1] = bytes32(abi.encodePacked(int32(9), bytes28(0)));
        h = NINE_INPUT_HASH;
    }

    bytes32 constant NINE_INPUT_HASH = 0xaa5f26c6a4a805f76bb61527b990cff348cb31fe44587673dcfb9da4d607b4e4;

    function offchainReceipt(address n, bytes32 input, bytes32 out)
        internal
        view
        returns (VerityReceipts.Receipt memory r, bytes memory sig)
    {
        return signedReceipt(keccak256("http request"), n, input, out, d.court().offchainDomain());
    }

    address constant CHALLENGER = address(0xC4A1);
    ReceiptCourt court;

    function dispute(VerityReceipts.Receipt memory r, bytes memory sig, bool hub_, bytes32[][] memory words)
        internal
        returns (uint256 id, uint256 g)
    {
        (uint64[] memory lens,,) = nineInput();
        vm.prank(CHALLENGER);
        (id, g) = court.disputeReceipt{value: 0.1 ether}(r, sig, hub_, keccak256("truth"), keccak256("t"), lens, words);
    }

    /// A node that signed an off-chain receipt must defend it in the game; if it cannot (here: it never
    /// reveals a trace), it loses its whole stake, half to the challenger.
    function test_an_offchain_receipt_is_disputed_and_its_node_loses_its_whole_stake() public {
        (, bytes32[][] memory words, bytes32 h) = nineInput();
        address n = vm.addr(keys[2]);
        (VerityReceipts.Receipt memory r, bytes memory sig) = offchainReceipt(n, h, keccak256("a lie"));
        court = d.court();
        vm.deal(CHALLENGER, 1 ether);
        // the input must be the receipt's
        bytes32[][] memory wrong = new bytes32[][](1);
        wrong[0] = new bytes32[](2);
        wrong[0][0] = words[0][0];
        vm.expectRevert(abi.encodeWithSelector(ReceiptCourt.BadReceipt.selector, "the input does not hash to the receipt's"));
        dispute(r, sig, false, wrong);
        // a hub-domain signature is not an off-chain one
        vm.expectRevert(abi.encodeWithSelector(ReceiptCourt.BadReceipt.selector, "signature"));
        dispute(r, sig, true, words);
        (uint256 id, uint256 g) = dispute(r, sig, false, words);
        OptimisticHub opt = d.optimistic();
        assertEq(opt.getRequest(id).inputHash, h, "the dispute holds the receipt's input");
        uint256 stake = nodes.stakeOf(n);
        vm.roll(block.number + 6);
        opt.timeout(g); // the node never revealed a trace for its receipt
        assertEq(nodes.stakeOf(n), 0, "the whole stake is gone");
        assertEq(CHALLENGER.balance, 1 ether - 0.1 ether + stake / 2, "half to the challenger");
        // the challenger's claim now stands and finalizes after a fresh window, returning its bond
        vm.roll(block.number + 11);
        opt.finalize(id);
        assertEq(CHALLENGER.balance, 1 ether + stake / 2, "bond back");
    }

    /// A receipt with a deferred trace (trace root zero, as nodes sign them while serving) can be disputed
    /// only over its output: a challenger who agrees on the output but names some trace root gains no game
    /// against the node; a different output opens one, and a node that never reveals loses its stake.
    function test_a_deferred_trace_receipt_is_disputed_over_its_output_only() public {
        (uint64[] memory lens, bytes32[][] memory words, bytes32 h) = nineInput();
        address n = vm.addr(keys[2]);
        VerityReceipts.Receipt memory r = VerityReceipts.Receipt({
            requestId: keccak256("http request"),
            modelId: MODEL,
            inputHash: h,
            outputHash: keccak256("its output"),
            traceRoot: bytes32(0),
            node: n,
            timestamp: uint64(block.timestamp)
        });
        court = d.court();
        bytes memory sig = signAs(keyOf(n), r, court.offchainDomain());
        vm.deal(CHALLENGER, 1 ether);
        vm.prank(CHALLENGER);
        vm.expectRevert(OptimisticHub.SameClaim.selector);
        court.disputeReceipt{value: 0.1 ether}(r, sig, false, keccak256("its output"), keccak256("t"), lens, words);
        assertEq(CHALLENGER.balance, 1 ether, "nothing taken from the refused challenger");
        uint256 stake = nodes.stakeOf(n);
        assertTrue(stake > 0, "staked");
        (uint256 id, uint256 g) = dispute(r, sig, false, words);
        OptimisticHub opt = d.optimistic();
        (, , bytes32 pendingTrace,) = opt.claims(id);
        assertEq(pendingTrace, bytes32(0), "the trace stays deferred until the node reveals it");
        vm.roll(block.number + 6);
        opt.timeout(g);
        assertEq(nodes.stakeOf(n), 0, "a node that cannot show a trace for its output loses its whole stake");
    }

    /// A hub receipt (signed or quorum mode) can be disputed the same way after the request finalized.
    function test_a_hub_receipt_is_disputable_after_finality() public {
        (, bytes32[][] memory words, bytes32 h) = nineInput();
        vm.prank(client);
        uint256 id = hub.request{value: 0.01 ether}(MODEL, h, "u", InferenceHub.Mode.Signed, 1);
        vm.roll(block.number + 2);
        address n = hub.assignment(id)[0];
        VerityReceipts.Receipt memory r = VerityReceipts.Receipt({
            requestId: bytes32(id),
            modelId: MODEL,
            inputHash: h,
            outputHash: keccak256("a lie"),
            traceRoot: keccak256("its trace"),
            node: n,
            timestamp: uint64(block.timestamp)
        });
        bytes memory sig = signAs(keyOf(n), r, hub.domainSeparator());
        hub.submit(id, r, sig);
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "final");
        vm.deal(CHALLENGER, 1 ether);
        court = d.court();
        (, uint256 g) = dispute(r, sig, true, words);
        vm.roll(block.number + 6);
        d.optimistic().timeout(g);
        assertEq(nodes.stakeOf(n), 0, "the liar's stake is slashed");
    }

    /// Two receipts of one node, same model and input, different outputs: slashed at once.
    function test_equivocation_is_slashed_at_once() public {
        address n = vm.addr(keys[4]);
        (VerityReceipts.Receipt memory a, bytes memory sa) = offchainReceipt(n, INPUT, keccak256("one"));
        (VerityReceipts.Receipt memory b, bytes memory sb) = offchainReceipt(n, INPUT, keccak256("two"));
        court = d.court();
        vm.expectRevert(abi.encodeWithSelector(ReceiptCourt.BadReceipt.selector, "same output"));
        court.slashEquivocation(a, sa, false, a, sa, false);
        uint256 stake = nodes.stakeOf(n);
        uint256 before = attacker.balance;
        vm.prank(attacker);
        court.slashEquivocation(a, sa, false, b, sb, false);
        assertEq(nodes.stakeOf(n), 0, "whole stake");
        assertEq(attacker.balance - before, stake / 2, "half to whoever showed it");
        assertEq(court.burned(), stake - stake / 2, "the rest burned");
    }
}
