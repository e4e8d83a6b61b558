// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./ModelRegistry.sol";
import "./NodeRegistry.sol";
import "./OptimisticHub.sol";
import "./VerityReceipts.sol";
import "./Merkle.sol";

/// @title Where every receipt a staked node signs can be challenged
/// @notice A receipt is signed under one of two EIP-712 domains: the InferenceHub's (it can finalize that
///         hub's request) or this court's own, `offchainDomain` (the receipts nodes give over HTTP and in
///         off-chain quorum certificates, which no hub accepts). Either kind is disputed here while its
///         node has stake: `disputeReceipt` checks the signature and that the input given in calldata
///         hashes to the receipt's input hash, publishes the input (`ReceiptDisputed`) so the node can
///         recompute its trace, and opens the OptimisticHub's bisection game against the receipt's claim
///         (output hash, trace root) — a node that cannot defend it loses its whole stake, half to the
///         challenger. Receipts usually defer the trace (trace root zero): the node reveals its trace root
///         in the game, checked against the receipt's input and output, so only the output can be disputed.
///         Two receipts from one node for the same model and input with different outputs
///         need no game: the canonical semantics give one output, so `slashEquivocation` takes the node's
///         whole stake at once. Economics: docs/spec/economics.md.
contract ReceiptCourt {
    ModelRegistry public immutable models;
    NodeRegistry public immutable nodes;
    /// EIP-712 domain separator of the InferenceHub's receipts.
    bytes32 public immutable hubDomain;
    /// EIP-712 domain separator of off-chain receipts: ("Verity", "1", chain ID, this court).
    bytes32 public immutable offchainDomain;
    address public immutable wirer;
    OptimisticHub public optimistic;
    /// Value taken from equivocating nodes and not paid to anyone (kept out of reach for good).
    uint256 public burned;

    event ReceiptDisputed(
        uint256 indexed disputeId,
        uint256 indexed gameId,
        address indexed node,
        bytes32 receiptRequestId,
        bool hubReceipt,
        uint64[] lens,
        bytes32[][] words
    );
    event Equivocation(address indexed node, bytes32 modelId, bytes32 inputHash, uint256 taken);

    error BadReceipt(string why);
    error NotWirer();
    error TransferFailed();

    constructor(ModelRegistry models_, NodeRegistry nodes_, bytes32 hubDomain_) {
        models = models_;
        nodes = nodes_;
        hubDomain = hubDomain_;
        offchainDomain = VerityReceipts.domainSeparator(block.chainid, address(this));
        wirer = msg.sender;
    }

    /// @notice Name the OptimisticHub whose game judges disputes; once, by the deploying factory.
    function wire(OptimisticHub optimistic_) external {
        if (msg.sender != wirer || address(optimistic) != address(0)) revert NotWirer();
        optimistic = optimistic_;
    }

    /// @notice Dispute a receipt with your own (output hash, trace root) and the OptimisticHub's challenge
    ///         bond. The input is `lens[i]` elements per input tensor, packed eight to a word as in the
    ///         trace (docs/spec/canonical.md §8). Returns the dispute ID (an OptimisticHub request ID) and
    ///         the game ID.
    function disputeReceipt(
        VerityReceipts.Receipt calldata receipt,
        bytes calldata signature,
        bool hubReceipt,
        bytes32 outputHash,
        bytes32 traceRoot,
        uint64[] calldata lens,
        bytes32[][] calldata words
    ) external payable returns (uint256 id, uint256 g) {
        check(receipt, signature, hubReceipt, lens, words);
        (id, g) = open(receipt, outputHash, traceRoot);
        emit ReceiptDisputed(id, g, receipt.node, receipt.requestId, hubReceipt, lens, words);
    }

    function check(
        VerityReceipts.Receipt calldata receipt,
        bytes calldata signature,
        bool hubReceipt,
        uint64[] calldata lens,
        bytes32[][] calldata words
    ) internal view {
        if (!VerityReceipts.isSignedByNode(receipt, hubReceipt ? hubDomain : offchainDomain, signature)) {
            revert BadReceipt("signature");
        }
        NodeRegistry.Node memory n = nodes.node(receipt.node);
        if (n.stake + n.unbonding == 0) revert BadReceipt("the node has no stake");
        if (!models.exists(receipt.modelId)) revert BadReceipt("unknown model");
        if (inputRoot(lens, words) != receipt.inputHash) revert BadReceipt("the input does not hash to the receipt's");
    }

    function open(VerityReceipts.Receipt calldata receipt, bytes32 outputHash, bytes32 traceRoot)
        internal
        returns (uint256, uint256)
    {
        return optimistic.openDispute{value: msg.value}(
            msg.sender,
            receipt.modelId,
            receipt.inputHash,
            receipt.node,
            receipt.outputHash,
            receipt.traceRoot,
            outputHash,
            traceRoot
        );
    }

    /// @notice Two receipts of one node for the same model and input with different outputs: its whole
    ///         stake (and unbonding funds) is slashed, half to the caller, the rest burned.
    function slashEquivocation(
        VerityReceipts.Receipt calldata a,
        bytes calldata sigA,
        bool hubA,
        VerityReceipts.Receipt calldata b,
        bytes calldata sigB,
        bool hubB
    ) external {
        if (a.node != b.node || a.modelId != b.modelId || a.inputHash != b.inputHash) {
            revert BadReceipt("not the same node, model and input");
        }
        if (a.outputHash == b.outputHash) revert BadReceipt("same output");
        if (!VerityReceipts.isSignedByNode(a, hubA ? hubDomain : offchainDomain, sigA)) revert BadReceipt("signature");
        if (!VerityReceipts.isSignedByNode(b, hubB ? hubDomain : offchainDomain, sigB)) revert BadReceipt("signature");
        uint256 taken = nodes.slash(a.node, type(uint256).max);
        burned += taken - taken / 2;
        emit Equivocation(a.node, a.modelId, a.inputHash, taken);
        if (taken / 2 > 0) {
            (bool ok,) = msg.sender.call{value: taken / 2}("");
            if (!ok) revert TransferFailed();
        }
    }

    /// The canonical hash of a list of tensors given as their words: each tensor's root is its element
    /// count bound to the tree of its word hashes; the input hash is the list root of those.
    function inputRoot(uint64[] calldata lens, bytes32[][] calldata words) internal pure returns (bytes32) {
        if (lens.length != words.length) revert BadReceipt("input");
        bytes32[] memory roots = new bytes32[](lens.length);
        for (uint256 i = 0; i < lens.length; i++) {
            uint256 w = (uint256(lens[i]) + 7) / 8;
            if (lens[i] == 0 || words[i].length != w) revert BadReceipt("input");
            bytes32[] memory h = new bytes32[](w);
            for (uint256 j = 0; j < w; j++) {
                h[j] = keccak256(abi.encodePacked(words[i][j]));
            }
            roots[i] = Merkle.bindLength(lens[i], Merkle.treeRoot(h));
        }
        return Merkle.listRoot(roots);
    }

    /// Receives slashed stake from the node registry.
    receive() external payable {
        if (msg.sender != address(nodes)) revert TransferFailed();
    }
}
