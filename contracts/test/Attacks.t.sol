// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/HubFixture.sol";

/// Refuses payments pushed with bounded gas, so they are credited; when it pulls them (full gas) its
/// `receive` replays a planned list of hub calls — re-entry attempts — and records how each ended.
contract Reenterer {
    InferenceHub immutable hub;
    bytes[] plan;
    /// Revert selector of each re-entry attempt (zero: it succeeded).
    bytes4[] public outcomes;
    uint256 public received;

    constructor(InferenceHub h) {
        hub = h;
    }

    function arm(bytes[] calldata calls) external {
        delete plan;
        for (uint256 i = 0; i < calls.length; i++) {
            plan.push(calls[i]);
        }
    }

    function pull() external {
        hub.withdraw();
    }

    function outcomeCount() external view returns (uint256) {
        return outcomes.length;
    }

    receive() external payable {
        if (gasleft() < 200_000) revert("refusing a bounded-gas payment");
        received += msg.value;
        bytes[] memory p = plan;
        delete plan;
        for (uint256 i = 0; i < p.length; i++) {
            (bool ok, bytes memory ret) = address(hub).call(p[i]);
            outcomes.push(ok ? bytes4(0) : bytes4(ret));
        }
    }
}

/// Burns every bit of gas it is given.
contract GasBurner {
    receive() external payable {
        while (true) {}
    }
}

/// A client contract whose result callback tries to re-enter the hub.
contract ReenteringConsumer is IVerityConsumer {
    InferenceHub immutable hub;
    bytes public replay;
    bytes4 public outcome;
    bool public called;
    bool public failing;

    constructor(InferenceHub h) {
        hub = h;
    }

    function ask(bytes32 model, bytes32 input) external payable returns (uint256) {
        return hub.request{value: msg.value}(model, input, "http://in", InferenceHub.Mode.Quorum, 2);
    }

    function setReplay(bytes calldata data) external {
        replay = data;
    }

    function setFailing(bool f) external {
        failing = f;
    }

    function onVerityResult(uint256, bytes32) external {
        if (failing) revert("callback fails");
        called = true;
        (bool ok, bytes memory ret) = address(hub).call(replay);
        outcome = ok ? bytes4(0) : bytes4(ret);
    }
}

contract AttacksTest is HubFixture {
    function submitCall(uint256 id, address node, bytes32 out) internal view returns (bytes memory) {
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, node, out);
        return abi.encodeCall(InferenceHub.submit, (id, r, sig));
    }

    function send(uint256 id, address node, bytes32 out) internal {
        (VerityReceipts.Receipt memory r, bytes memory sig) = receipt(id, node, out);
        hub.submit(id, r, sig);
    }

    function test_double_finalization_is_impossible() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.04 ether);
        address[] memory a = hub.assignment(id);
        assertEq(a.length, 4, "k + 2 assigned");
        send(id, a[0], keccak256("o"));
        send(id, a[1], keccak256("o"));
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "finalized at k");
        uint256[4] memory before;
        for (uint256 i = 0; i < 4; i++) {
            before[i] = a[i].balance;
        }
        uint256 ownerBefore = owner.balance;
        bytes32 key = keccak256(abi.encodePacked(INPUT, keccak256("o")));
        // A spare with the same answer, a spare with another answer, a finalizing node again.
        (VerityReceipts.Receipt memory r2, bytes memory s2) = receipt(id, a[2], keccak256("o"));
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.submit(id, r2, s2);
        (VerityReceipts.Receipt memory r3, bytes memory s3) = receipt(id, a[3], keccak256("x"));
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.submit(id, r3, s3);
        (VerityReceipts.Receipt memory r0, bytes memory s0) = receipt(id, a[0], keccak256("o"));
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.submit(id, r0, s0);
        // Nor can the finalized request be timed out for a refund later.
        vm.warp(block.timestamp + 2 hours);
        vm.expectRevert(InferenceHub.NotPending.selector);
        hub.timeout(id);
        assertEq(hub.votes(id, key), 2, "no vote after finalization");
        for (uint256 i = 0; i < 4; i++) {
            assertEq(a[i].balance, before[i], "nobody paid twice");
        }
        assertEq(owner.balance, ownerBefore, "owner paid once");
        assertEq(address(hub).balance, 0, "the hub holds nothing");
    }

    function test_a_node_reentering_on_payout_gets_paid_once() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.05 ether);
        address[] memory a = hub.assignment(id);
        // The first node is a contract (e.g. an EIP-7702 delegated account) that refuses pushed payments.
        Reenterer impl = new Reenterer(hub);
        vm.etch(a[0], address(impl).code);
        uint256 start = a[0].balance;
        send(id, a[0], keccak256("o"));
        vm.recordLogs();
        send(id, a[1], keccak256("o"));
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "a refusing winner cannot block finality");
        uint256 share = 0.02 ether; // (fee - price) / k
        assertEq(hub.owed(a[0]), share, "the refused share is credited");
        assertEq(address(hub).balance, share, "the hub holds exactly what it owes");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        bool deferred;
        for (uint256 i = 0; i < logs.length; i++) {
            if (logs[i].topics[0] == keccak256("PaymentDeferred(address,uint256)")) deferred = true;
        }
        assertTrue(deferred, "PaymentDeferred emitted");
        // On withdrawal it re-enters: withdraw again, submit a spare's receipt, submit its own again, timeout.
        bytes[] memory plan = new bytes[](4);
        plan[0] = abi.encodeCall(Payouts.withdraw, ());
        plan[1] = submitCall(id, a[2], keccak256("o"));
        plan[2] = submitCall(id, a[0], keccak256("o"));
        plan[3] = abi.encodeCall(InferenceHub.timeout, (id));
        Reenterer(payable(a[0])).arm(plan);
        Reenterer(payable(a[0])).pull();
        Reenterer r = Reenterer(payable(a[0]));
        assertEq(r.outcomeCount(), 4, "every re-entry attempted");
        assertSel(r.outcomes(0), Payouts.NothingOwed.selector, "second withdraw finds nothing");
        assertSel(r.outcomes(1), InferenceHub.NotPending.selector, "submit inside the payout is refused");
        assertSel(r.outcomes(2), InferenceHub.NotPending.selector, "own replay refused");
        assertSel(r.outcomes(3), InferenceHub.NotPending.selector, "timeout refused");
        assertEq(r.received(), share, "received its share once");
        assertEq(a[0].balance - start, share, "balance grew by the share only");
        assertEq(hub.owed(a[0]), 0, "nothing owed any more");
        assertEq(address(hub).balance, 0, "hub empty");
        vm.expectRevert(Payouts.NothingOwed.selector);
        r.pull();
    }

    function assertSel(bytes4 x, bytes4 y, string memory what) internal pure {
        assertEq(bytes32(x), bytes32(y), what);
    }

    function test_a_model_owner_burning_gas_cannot_block_finality() public {
        GasBurner burner = new GasBurner();
        vm.etch(owner, address(burner).code);
        uint256 id = ask(InferenceHub.Mode.Signed, 0, 0.03 ether);
        address n = hub.assignment(id)[0];
        uint256 nodeBefore = n.balance;
        send(id, n, keccak256("o"));
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "finalized");
        assertEq(n.balance - nodeBefore, 0.02 ether, "node paid");
        assertEq(hub.owed(owner), 0.01 ether, "owner's price credited");
        // Once the owner can take payments again, it pulls what it is owed.
        vm.etch(owner, "");
        uint256 ownerBefore = owner.balance;
        vm.prank(owner);
        hub.withdraw();
        assertEq(owner.balance - ownerBefore, 0.01 ether, "owner withdrew");
        assertEq(address(hub).balance, 0, "hub empty");
    }

    function test_a_client_reentering_its_refund_gets_it_once() public {
        uint256 id = ask(InferenceHub.Mode.Quorum, 2, 0.02 ether);
        address[] memory a = hub.assignment(id);
        send(id, a[0], keccak256("o"));
        Reenterer impl = new Reenterer(hub);
        vm.etch(client, address(impl).code);
        vm.warp(block.timestamp + 1 hours + 1);
        hub.timeout(id);
        uint256 refund = 0.02 ether; // the fee only: the silent node's penalty is burned
        assertEq(hub.refundOf(id), refund, "refund recorded");
        assertEq(hub.owed(client), refund, "refused refund credited");
        bytes[] memory plan = new bytes[](3);
        plan[0] = abi.encodeCall(InferenceHub.timeout, (id));
        plan[1] = abi.encodeCall(Payouts.withdraw, ());
        plan[2] = submitCall(id, a[1], keccak256("o"));
        Reenterer r = Reenterer(payable(client));
        r.arm(plan);
        uint256 before = client.balance;
        r.pull();
        assertSel(r.outcomes(0), InferenceHub.NotPending.selector, "no second refund");
        assertSel(r.outcomes(1), Payouts.NothingOwed.selector, "no second withdrawal");
        assertSel(r.outcomes(2), InferenceHub.NotPending.selector, "no late receipt");
        assertEq(client.balance - before, refund, "refunded once");
        assertEq(address(hub).balance, hub.burned(), "only the burned penalty stays in the hub");
    }

    function test_a_consumer_callback_cannot_reenter_or_undo_finality() public {
        ReenteringConsumer c = new ReenteringConsumer(hub);
        vm.deal(address(this), 1 ether);
        uint256 id = c.ask{value: 0.02 ether}(MODEL, INPUT);
        vm.roll(block.number + 2);
        address[] memory a = hub.assignment(id);
        c.setReplay(submitCall(id, a[2], keccak256("o")));
        send(id, a[0], keccak256("o"));
        send(id, a[1], keccak256("o"));
        assertTrue(c.called(), "callback ran");
        assertSel(c.outcome(), InferenceHub.NotPending.selector, "re-entering submit from the callback is refused");
        assertEq(hub.submitted(id, a[2]), bytes32(0), "the spare's receipt was not recorded");
        assertTrue(hub.getRequest(id).status == InferenceHub.Status.Finalized, "finalized");
        // A callback that reverts does not undo finality either.
        uint256 id2 = c.ask{value: 0.02 ether}(MODEL, INPUT);
        vm.roll(block.number + 2);
        address[] memory b = hub.assignment(id2);
        c.setFailing(true);
        send(id2, b[0], keccak256("p"));
        send(id2, b[1], keccak256("p"));
        assertTrue(hub.getRequest(id2).status == InferenceHub.Status.Finalized, "finalized despite the callback");
    }

    function test_only_the_registry_can_send_the_hub_ether() public {
        vm.deal(address(this), 1 ether);
        (bool ok,) = address(hub).call{value: 1 wei}("");
        assertTrue(!ok, "stray ether refused");
        vm.expectRevert(Payouts.NothingOwed.selector);
        hub.withdraw();
    }
}
