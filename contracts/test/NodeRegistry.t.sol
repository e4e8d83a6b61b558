// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/Test.sol";
import "../src/NodeRegistry.sol";

/// Stands in for a verification contract that may slash.
contract Slasher {
    NodeRegistry reg;

    constructor(NodeRegistry r) {
        reg = r;
    }

    function slash(address node, uint256 amount) external returns (uint256) {
        return reg.slash(node, amount);
    }

    receive() external payable {}
}

contract NodeRegistryTest is Test {
    NodeRegistry reg;
    Slasher slasher;
    address n1 = address(0x1001);
    address n2 = address(0x1002);
    uint64 constant DELAY = 7 days;

    function setUp() public {
        reg = new NodeRegistry(1 ether, DELAY);
        slasher = new Slasher(reg);
        address[] memory s = new address[](1);
        s[0] = address(slasher);
        reg.wireSlashers(s);
        vm.deal(n1, 10 ether);
        vm.deal(n2, 10 ether);
    }

    function test_register_stake_and_endpoint() public {
        vm.prank(n1);
        reg.register{value: 2 ether}("http://127.0.0.1:7070");
        assertTrue(reg.isActive(n1), "active");
        assertEq(reg.stakeOf(n1), 2 ether, "stake");
        vm.prank(n1);
        reg.addStake{value: 1 ether}();
        assertEq(reg.stakeOf(n1), 3 ether, "more stake");
        vm.prank(n1);
        reg.setEndpoint("http://10.0.0.1:7070");
        assertEq(keccak256(bytes(reg.node(n1).endpoint)), keccak256("http://10.0.0.1:7070"), "endpoint");
        assertEq(reg.nodeCount(), 1, "count");
        vm.prank(n1);
        vm.expectRevert(NodeRegistry.AlreadyRegistered.selector);
        reg.register{value: 1 ether}("x");
    }

    function test_minimum_stake_and_endpoint_rules() public {
        vm.prank(n1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StakeTooLow.selector, 1 ether));
        reg.register{value: 0.5 ether}("http://a");
        vm.prank(n1);
        vm.expectRevert(NodeRegistry.BadEndpoint.selector);
        reg.register{value: 1 ether}("");
    }

    function test_unbonding_waits_for_the_delay() public {
        vm.warp(1000);
        vm.prank(n1);
        reg.register{value: 3 ether}("http://a");
        vm.prank(n1);
        reg.requestUnbond(2.5 ether);
        assertTrue(!reg.isActive(n1), "below the minimum stake after unbonding");
        vm.prank(n1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StillUnbonding.selector, uint64(1000) + DELAY));
        reg.withdraw();
        vm.warp(1000 + DELAY);
        uint256 before = n1.balance;
        vm.prank(n1);
        reg.withdraw();
        assertEq(n1.balance - before, 2.5 ether, "withdrawn");
        vm.prank(n1);
        vm.expectRevert(NodeRegistry.NothingToWithdraw.selector);
        reg.withdraw();
        vm.prank(n1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.AmountTooLarge.selector, 0.5 ether));
        reg.requestUnbond(5 ether);
    }

    function test_only_wired_contracts_slash_and_unbonding_stake_stays_slashable() public {
        vm.prank(n1);
        reg.register{value: 3 ether}("http://a");
        vm.prank(n1);
        reg.requestUnbond(2 ether);
        // Nobody else can slash: not the deployer, not the node, not a stranger.
        vm.expectRevert(NodeRegistry.NotSlasher.selector);
        reg.slash(n1, 1 ether);
        vm.prank(n2);
        vm.expectRevert(NodeRegistry.NotSlasher.selector);
        reg.slash(n1, 1 ether);
        // The wired contract takes stake first, then unbonding funds, and receives them.
        uint256 taken = slasher.slash(n1, 2.5 ether);
        assertEq(taken, 2.5 ether, "taken");
        assertEq(address(slasher).balance, 2.5 ether, "paid to the slasher");
        assertEq(reg.stakeOf(n1), 0, "stake gone");
        assertEq(reg.node(n1).unbonding, 0.5 ether, "unbonding reduced");
        assertEq(slasher.slash(n1, 10 ether), 0.5 ether, "capped at what is left");
    }

    function test_wiring_happens_once_and_only_by_the_deployer() public {
        address[] memory s = new address[](1);
        s[0] = address(this);
        vm.expectRevert(NodeRegistry.AlreadyWired.selector);
        reg.wireSlashers(s);
        NodeRegistry fresh = new NodeRegistry(1 ether, DELAY);
        vm.prank(n1);
        vm.expectRevert(NodeRegistry.NotWirer.selector);
        fresh.wireSlashers(s);
    }

    function testFuzz_stake_accounting(uint96 stake, uint96 unbond, uint96 cut) public {
        vm.deal(n1, uint256(stake) + 1 ether);
        uint256 s = uint256(stake) + 1 ether;
        vm.prank(n1);
        reg.register{value: s}("http://a");
        uint256 u = uint256(unbond) % (s + 1);
        vm.prank(n1);
        reg.requestUnbond(u);
        uint256 taken = slasher.slash(n1, cut);
        NodeRegistry.Node memory n = reg.node(n1);
        assertEq(n.stake + n.unbonding + taken, s, "conservation");
        assertEq(address(reg).balance, n.stake + n.unbonding, "registry holds exactly what it owes");
    }

    function test_hosting_announcements() public {
        bytes32 m = keccak256("model");
        vm.prank(n1);
        vm.expectRevert(NodeRegistry.NotRegistered.selector);
        reg.setHosting(m, true);
        vm.prank(n1);
        reg.register{value: 1 ether}("http://n1");
        vm.prank(n2);
        reg.register{value: 1 ether}("http://n2");
        address n3 = address(0x1003);
        vm.deal(n3, 2 ether);
        vm.prank(n3);
        reg.register{value: 1 ether}("http://n3");
        vm.prank(n1);
        reg.setHosting(m, true);
        vm.prank(n2);
        reg.setHosting(m, true);
        vm.prank(n2);
        reg.setHosting(m, true); // idempotent
        vm.prank(n3);
        reg.setHosting(m, true);
        assertEq(reg.hostsOf(m).length, 3, "three hosts");
        assertTrue(reg.isHosting(m, n2), "n2 hosts");
        // n1 (the first) withdraws: the list stays consistent.
        vm.prank(n1);
        reg.setHosting(m, false);
        address[] memory h = reg.hostsOf(m);
        assertEq(h.length, 2, "two hosts");
        assertTrue(!reg.isHosting(m, n1), "n1 no longer hosts");
        assertTrue((h[0] == n3 && h[1] == n2) || (h[0] == n2 && h[1] == n3), "n2 and n3 remain");
        vm.prank(n3);
        reg.setHosting(m, false);
        vm.prank(n3);
        reg.setHosting(m, false); // idempotent
        h = reg.hostsOf(m);
        assertEq(h.length, 1, "one host");
        assertEq(h[0], n2, "n2 remains");
        vm.prank(n1);
        reg.setHosting(m, true);
        assertEq(reg.hostsOf(m).length, 2, "n1 back");
        assertEq(reg.hostsOf(keccak256("other")).length, 0, "other models unaffected");
    }
}
