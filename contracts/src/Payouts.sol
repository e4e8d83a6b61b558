// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Bounded push payments with a pull fallback
/// @notice A payment is pushed with PAY_GAS; a recipient that reverts or needs more gas cannot block the
///         caller (finalization, refunds, dispute payouts): the amount is credited to `owed` and pulled
///         with `withdraw`. Callers settle their state before paying, so a re-entering recipient finds it
///         closed.
abstract contract Payouts {
    /// Gas forwarded with a payment; a recipient that needs more (or refuses) is credited in `owed`.
    uint256 public constant PAY_GAS = 50_000;

    /// Payments a recipient refused or could not take within PAY_GAS, to be pulled with `withdraw`.
    mapping(address => uint256) public owed;

    event PaymentDeferred(address indexed to, uint256 amount);
    event Withdrawn(address indexed to, uint256 amount);

    error NothingOwed();
    error TransferFailed();

    function pay(address to, uint256 amount) internal {
        if (amount == 0) return;
        (bool ok,) = to.call{value: amount, gas: PAY_GAS}("");
        if (!ok) {
            owed[to] += amount;
            emit PaymentDeferred(to, amount);
        }
    }

    /// @notice Pull payments that could not be pushed.
    function withdraw() external {
        uint256 amount = owed[msg.sender];
        if (amount == 0) revert NothingOwed();
        owed[msg.sender] = 0;
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
        emit Withdrawn(msg.sender, amount);
    }
}
