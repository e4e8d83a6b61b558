// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./utils/Test.sol";
import "../src/ModelRegistry.sol";

contract ModelRegistryTest is Test {
    ModelRegistry reg;
    address alice = address(0xA11CE);
    address bob = address(0xB0B);
    bytes32 constant M1 = keccak256("model 1");
    bytes32 constant M2 = keccak256("model 2");
    bytes32 constant M3 = keccak256("model 3");

    function setUp() public {
        reg = new ModelRegistry();
    }

    function test_register_resolve_and_price() public {
        vm.prank(alice);
        reg.register(M1, "mlp", "1.0.0", keccak256("manifest"), 5 gwei);
        ModelRegistry.Model memory m = reg.model(M1);
        assertEq(m.owner, alice, "owner");
        assertEq(m.pricePerInference, 5 gwei, "price");
        assertEq(reg.resolve("mlp", "1.0.0"), M1, "resolve");
        assertEq(reg.latest("mlp"), M1, "latest");
        assertEq(reg.nameOwner(keccak256("mlp")), alice, "name owner");
        vm.prank(alice);
        reg.register(M2, "mlp", "1.1.0", bytes32(0), 7 gwei);
        assertEq(reg.latest("mlp"), M2, "latest after second version");
        vm.prank(alice);
        reg.setPrice(M1, 9 gwei);
        assertEq(reg.priceOf(M1), 9 gwei, "new price");
    }

    function test_only_the_name_owner_adds_versions() public {
        vm.prank(alice);
        reg.register(M1, "mlp", "1", bytes32(0), 0);
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotNameOwner.selector, alice));
        reg.register(M2, "mlp", "2", bytes32(0), 0);
    }

    function test_versions_and_ids_are_immutable() public {
        vm.startPrank(alice);
        reg.register(M1, "mlp", "1", bytes32(0), 0);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.VersionTaken.selector, M1));
        reg.register(M2, "mlp", "1", bytes32(0), 0);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.AlreadyRegistered.selector, M1));
        reg.register(M1, "other", "1", bytes32(0), 0);
        vm.stopPrank();
    }

    function test_only_the_owner_sets_the_price() public {
        vm.prank(alice);
        reg.register(M1, "mlp", "1", bytes32(0), 1);
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotModelOwner.selector, alice));
        reg.setPrice(M1, 0);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownModel.selector, M3));
        reg.setPrice(M3, 0);
    }

    function test_bad_input() public {
        vm.expectRevert(ModelRegistry.ZeroModelId.selector);
        reg.register(bytes32(0), "mlp", "1", bytes32(0), 0);
        vm.expectRevert(ModelRegistry.BadName.selector);
        reg.register(M1, "bad name", "1", bytes32(0), 0);
        vm.expectRevert(ModelRegistry.BadName.selector);
        reg.register(M1, "-x", "1", bytes32(0), 0);
        vm.expectRevert(ModelRegistry.BadName.selector);
        reg.register(M1, "x", "", bytes32(0), 0);
        reg.register(M1, "x", "1.2.3+build.4", bytes32(0), 0);
    }

    function testFuzz_nobody_else_can_take_a_name(address other, bytes32 id) public {
        if (other == alice || id == bytes32(0) || id == M1) return;
        vm.prank(alice);
        reg.register(M1, "mlp", "1", bytes32(0), 0);
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotNameOwner.selector, alice));
        reg.register(id, "mlp", "2", bytes32(0), 0);
    }
}
