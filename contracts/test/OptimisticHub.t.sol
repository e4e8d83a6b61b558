// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/HubFixture.sol";

/// The optimistic hub's request life cycle without a full game (games with real traces run on anvil in
/// crates/cli/tests/it/dispute.rs): who may commit, bonds, windows, finalization, refunds, timeouts, and
/// the checks every game move starts with.
contract OptimisticHubTest is HubFixture {
    OptimisticHub opt;
    address challenger = address(0xBAD);
    bytes32 constant OUT = keccak256("out");
    bytes32 constant TRACE = keccak256("trace");

    function setUpOpt() internal {
        opt = d.optimistic();
        vm.deal(challenger, 10 ether);
    }

    function askOpt() internal returns (uint256 id, address node) {
        setUpOpt();
        vm.prank(client);
        id = opt.request{value: 0.02 ether}(MODEL, INPUT, "http://inputs/1");
        vm.roll(block.number + 2);
        node = opt.assigned(id);
    }

    function testRequestNeedsKnownModelInputHashAndFee() public {
        setUpOpt();
        vm.startPrank(client);
        vm.expectRevert(OptimisticHub.UnknownModel.selector);
        opt.request{value: 1 ether}(keccak256("nope"), INPUT, "");
        vm.expectRevert(OptimisticHub.NeedInputHash.selector);
        opt.request{value: 1 ether}(MODEL, bytes32(0), "");
        vm.expectRevert(abi.encodeWithSelector(OptimisticHub.FeeTooLow.selector, 0.01 ether));
        opt.request{value: 0.001 ether}(MODEL, INPUT, "");
        vm.stopPrank();
    }

    function testOnlyTheAssignedNodeCommitsWithTheBond() public {
        (uint256 id, address node) = askOpt();
        address other = vm.addr(keys[0]) == node ? vm.addr(keys[1]) : vm.addr(keys[0]);
        vm.prank(other);
        vm.expectRevert(OptimisticHub.NotAssigned.selector);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OptimisticHub.WrongBond.selector, 0.1 ether));
        opt.commit{value: 0.05 ether}(id, OUT, TRACE);
        vm.prank(node);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
        vm.prank(node);
        vm.expectRevert(OptimisticHub.WrongStatus.selector);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
    }

    function testUnchallengedClaimFinalizesAfterTheWindowAndPays() public {
        (uint256 id, address node) = askOpt();
        vm.prank(node);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
        vm.expectRevert(OptimisticHub.WindowOpen.selector);
        opt.finalize(id);
        uint256 nodeBefore = node.balance;
        uint256 ownerBefore = owner.balance;
        vm.roll(block.number + 11);
        opt.finalize(id);
        assertEq(owner.balance - ownerBefore, 0.01 ether, "model owner paid its price");
        assertEq(node.balance - nodeBefore, 0.01 ether + 0.1 ether, "node paid the rest and its bond");
        assertEq(uint256(opt.getRequest(id).status), uint256(OptimisticHub.Status.Finalized), "finalized");
        vm.expectRevert(OptimisticHub.WrongStatus.selector);
        opt.finalize(id);
    }

    function testChallengeRulesAndAMissedRevealLoses() public {
        (uint256 id, address node) = askOpt();
        vm.prank(node);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
        vm.startPrank(challenger);
        vm.expectRevert(OptimisticHub.SameClaim.selector);
        opt.challenge{value: 0.1 ether}(id, OUT, TRACE);
        vm.expectRevert(abi.encodeWithSelector(OptimisticHub.WrongBond.selector, 0.1 ether));
        opt.challenge{value: 0.01 ether}(id, keccak256("o2"), keccak256("t2"));
        uint256 g = opt.challenge{value: 0.1 ether}(id, keccak256("o2"), keccak256("t2"));
        vm.stopPrank();
        // only the challenger chooses, and only in its stage; finalization waits for the game
        vm.expectRevert(OptimisticHub.WrongStage.selector);
        opt.choose(g, true);
        vm.roll(block.number + 11);
        vm.expectRevert(OptimisticHub.GamesOpen.selector);
        opt.finalize(id);
        uint256 stakeBefore = nodes.stakeOf(node);
        uint256 chBefore = challenger.balance;
        opt.timeout(g); // the defender never revealed (5-block moves)
        assertEq(nodes.stakeOf(node), 0, "the defender loses its whole stake");
        uint256 pot = 0.1 ether + stakeBefore;
        assertEq(challenger.balance - chBefore, pot / 2, "half of bond + stake to the challenger");
        assertEq(opt.burned(), pot - pot / 2, "the other half burned");
        (address o,,,) = opt.claims(id);
        assertEq(o, challenger, "the challenger's claim is pending now");
        vm.expectRevert(OptimisticHub.WrongStage.selector);
        opt.timeout(g);
        // a fresh window for the new claim, then it finalizes and the challenger gets fee and bond
        vm.expectRevert(OptimisticHub.WindowOpen.selector);
        opt.finalize(id);
        vm.roll(block.number + 11);
        opt.finalize(id);
    }

    function testChallengeAfterTheWindowIsRefused() public {
        (uint256 id, address node) = askOpt();
        vm.prank(node);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
        vm.roll(block.number + 11);
        vm.prank(challenger);
        vm.expectRevert(OptimisticHub.WindowClosed.selector);
        opt.challenge{value: 0.1 ether}(id, keccak256("o2"), keccak256("t2"));
    }

    function testSilentNodeIsSlashedAndTheClientRefunded() public {
        (uint256 id, address node) = askOpt();
        vm.expectRevert(OptimisticHub.TooEarly.selector);
        opt.timeoutRequest(id);
        vm.roll(block.number + 21);
        uint256 before = client.balance;
        opt.timeoutRequest(id);
        assertEq(client.balance - before, 0.02 ether, "the fee only");
        assertEq(opt.burned(), 0.5 ether, "the silent node's penalty is burned");
        assertEq(uint256(opt.getRequest(id).status), uint256(OptimisticHub.Status.Refunded), "refunded");
        vm.prank(node);
        vm.expectRevert(OptimisticHub.WrongStatus.selector);
        opt.commit{value: 0.1 ether}(id, OUT, TRACE);
    }
}
