// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./ModelRegistry.sol";
import "./NodeRegistry.sol";
import "./VerityReceipts.sol";
import "./Assignment.sol";
import "./Payouts.sol";

/// @notice Implemented by contracts that want the result of their request pushed to them.
interface IVerityConsumer {
    function onVerityResult(uint256 requestId, bytes32 outputHash) external;
}

/// @title Verity inference hub
/// @notice Clients request inferences; nodes are assigned by a public stake-weighted rule from a seed that
///         is the hash of a block mined after the request (the client cannot pick it); assigned nodes submit
///         EIP-712 receipts that this contract checks with `ecrecover`. Mode `signed` finalizes on one
///         valid receipt, `quorum` on k receipts with equal (input hash, output hash) from distinct assigned
///         nodes. Every accepted receipt's hashes stay in storage and receipts that disagree emit `Conflict`:
///         the evidence a dispute starts from. A request may leave `inputHash` zero when its input is fully
///         given by `inputUri` (e.g. carried on-chain) and its canonical hash is not known to the requester;
///         the nodes' receipts then name it, and a quorum must agree on it too. After the response window an unfinished request
///         refunds the client and slashes the assigned nodes that never answered.
contract InferenceHub is Payouts {
    using VerityReceipts for VerityReceipts.Receipt;

    enum Mode {
        Signed,
        Quorum
    }

    enum Status {
        None,
        Pending,
        Finalized,
        Refunded
    }

    struct Request {
        address client;
        Mode mode;
        uint8 k;
        Status status;
        uint64 seedBlock;
        uint64 deadline;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint256 fee;
        string inputUri;
    }

    uint8 public constant MAX_QUORUM = 7;
    uint256 public constant CALLBACK_GAS = 200_000;

    ModelRegistry public immutable models;
    NodeRegistry public immutable nodes;
    uint64 public immutable responseWindow;
    uint256 public immutable timeoutPenalty;
    bytes32 public immutable domainSeparator;

    uint256 public requestCount;
    mapping(uint256 => Request) private requests;
    /// What one node's accepted receipt said.
    struct Vote {
        bytes32 inputHash;
        bytes32 outputHash;
    }

    /// request => node => output hash it submitted (zero: none)
    mapping(uint256 => mapping(address => bytes32)) public submitted;
    /// request => node => the input hash its receipt named (equal to the request's unless that was zero)
    mapping(uint256 => mapping(address => bytes32)) public submittedInput;
    /// request => keccak256(inputHash ‖ outputHash) => how many assigned nodes submitted it
    mapping(uint256 => mapping(bytes32 => uint256)) public votes;
    mapping(uint256 => address[]) private submitters;
    /// request => what `timeout` paid its client (fee plus penalties)
    mapping(uint256 => uint256) public refundOf;

    event Requested(
        uint256 indexed requestId,
        address indexed client,
        bytes32 indexed modelId,
        bytes32 inputHash,
        string inputUri,
        Mode mode,
        uint8 k,
        uint256 fee,
        uint64 seedBlock,
        uint64 deadline
    );
    event ReceiptAccepted(uint256 indexed requestId, address indexed node, bytes32 outputHash, bytes32 traceRoot);
    event Conflict(
        uint256 indexed requestId,
        address nodeA,
        bytes32 inputA,
        bytes32 outputA,
        address nodeB,
        bytes32 inputB,
        bytes32 outputB
    );
    event Finalized(uint256 indexed requestId, bytes32 inputHash, bytes32 outputHash, address[] nodes);
    event Refunded(uint256 indexed requestId, uint256 amount, address[] silent);
    event CallbackFailed(uint256 indexed requestId);

    error UnknownModel();
    error BadMode();
    error FeeTooLow(uint256 required);
    error NotPending();
    error TooLate();
    error TooEarly();
    error WrongRequest();
    error BadSignature();
    error NotAssigned(address node);
    error AlreadySubmitted();

    constructor(ModelRegistry models_, NodeRegistry nodes_, uint64 responseWindow_, uint256 timeoutPenalty_) {
        models = models_;
        nodes = nodes_;
        responseWindow = responseWindow_;
        timeoutPenalty = timeoutPenalty_;
        domainSeparator = VerityReceipts.domainSeparator(block.chainid, address(this));
    }

    /// @notice Ask for an inference of `modelId` on the input with canonical hash `inputHash` (or zero when
    ///         unknown), fetchable at `inputUri`. The fee must cover the model's price times the number of
    ///         nodes needed.
    function request(bytes32 modelId, bytes32 inputHash, string calldata inputUri, Mode mode, uint8 k)
        external
        payable
        returns (uint256 id)
    {
        if (!models.exists(modelId)) revert UnknownModel();
        if (mode == Mode.Signed) {
            k = 1;
        } else if (k < 2 || k > MAX_QUORUM) {
            revert BadMode();
        }
        uint256 required = models.priceOf(modelId) * k;
        if (msg.value < required) revert FeeTooLow(required);
        id = ++requestCount;
        Request storage r = requests[id];
        r.client = msg.sender;
        r.mode = mode;
        r.k = k;
        r.status = Status.Pending;
        r.seedBlock = uint64(block.number + 1);
        r.deadline = uint64(block.timestamp) + responseWindow;
        r.modelId = modelId;
        r.inputHash = inputHash;
        r.fee = msg.value;
        r.inputUri = inputUri;
        emit Requested(id, msg.sender, modelId, inputHash, inputUri, mode, k, msg.value, r.seedBlock, r.deadline);
    }

    function getRequest(uint256 id) external view returns (Request memory) {
        return requests[id];
    }

    /// @notice The seed of a request: keccak256(blockhash(seedBlock) ‖ id), known once seedBlock is mined.
    function seedOf(uint256 id) public view returns (bytes32) {
        Request storage r = requests[id];
        if (r.status == Status.None) revert WrongRequest();
        return Assignment.seed(r.seedBlock, id);
    }

    /// @notice The nodes assigned to a request: `min(count, active nodes)` draws without replacement, each
    ///         picking node i with probability stake_i / remaining stake, using keccak256(seed ‖ draw) mod
    ///         the remaining stake and walking the registry's node list in order. Count is k + 2 for
    ///         quorum requests (spares for nodes that do not answer) and 1 for signed ones.
    function assignment(uint256 id) public view returns (address[] memory) {
        Request storage r = requests[id];
        return Assignment.draw(nodes, seedOf(id), r.mode == Mode.Signed ? 1 : uint256(r.k) + 2);
    }

    function isAssigned(uint256 id, address node) public view returns (bool) {
        address[] memory a = assignment(id);
        for (uint256 i = 0; i < a.length; i++) {
            if (a[i] == node) return true;
        }
        return false;
    }

    /// @notice Submit a node's signed receipt for request `id` (anyone may relay it).
    function submit(uint256 id, VerityReceipts.Receipt calldata receipt, bytes calldata signature) external {
        accept(id, receipt, signature);
    }

    /// @notice Submit several receipts for request `id` in one transaction — e.g. the receipts of a quorum
    ///         certificate gathered off-chain. Each is checked exactly as by `submit`, except that a
    ///         receipt from a node whose receipt is already recorded is skipped (the node may have sent it
    ///         itself); the request finalizes as soon as k agree, and receipts after that are ignored.
    function submitAll(uint256 id, VerityReceipts.Receipt[] calldata receipts, bytes[] calldata signatures)
        external
    {
        if (receipts.length != signatures.length || receipts.length == 0) revert WrongRequest();
        if (requests[id].status != Status.Pending) revert NotPending();
        for (uint256 i = 0; i < receipts.length; i++) {
            if (requests[id].status != Status.Pending) break;
            if (submitted[id][receipts[i].node] != bytes32(0)) continue;
            accept(id, receipts[i], signatures[i]);
        }
    }

    function accept(uint256 id, VerityReceipts.Receipt calldata receipt, bytes calldata signature) internal {
        Request storage r = requests[id];
        if (r.status != Status.Pending) revert NotPending();
        if (block.timestamp > r.deadline) revert TooLate();
        if (
            receipt.requestId != bytes32(id) || receipt.modelId != r.modelId
                || (r.inputHash != bytes32(0) && receipt.inputHash != r.inputHash) || receipt.outputHash == bytes32(0)
        ) {
            revert WrongRequest();
        }
        if (!receipt.isSignedByNode(domainSeparator, signature)) revert BadSignature();
        address node = receipt.node;
        if (!isAssigned(id, node)) revert NotAssigned(node);
        if (submitted[id][node] != bytes32(0)) revert AlreadySubmitted();
        bytes32 out = receipt.outputHash;
        bytes32 inp = receipt.inputHash;
        // Record disagreement with earlier receipts as evidence.
        address[] storage prev = submitters[id];
        for (uint256 i = 0; i < prev.length; i++) {
            bytes32 o = submitted[id][prev[i]];
            bytes32 pi = r.inputHash == bytes32(0) ? submittedInput[id][prev[i]] : inp;
            if (o != out || pi != inp) emit Conflict(id, prev[i], pi, o, node, inp, out);
        }
        submitted[id][node] = out;
        if (r.inputHash == bytes32(0)) submittedInput[id][node] = inp;
        prev.push(node);
        uint256 n = ++votes[id][keccak256(abi.encodePacked(inp, out))];
        emit ReceiptAccepted(id, node, out, receipt.traceRoot);
        if (n >= r.k) finalize(id, inp, out);
    }

    function finalize(uint256 id, bytes32 inp, bytes32 out) internal {
        Request storage r = requests[id];
        bool unbound = r.inputHash == bytes32(0);
        r.status = Status.Finalized;
        r.outputHash = out;
        r.inputHash = inp;
        address[] memory winners = new address[](r.k);
        address[] storage subs = submitters[id];
        uint256 w;
        for (uint256 i = 0; i < subs.length && w < r.k; i++) {
            address s = subs[i];
            if (submitted[id][s] == out && (!unbound || submittedInput[id][s] == inp)) winners[w++] = s;
        }
        uint256 price = models.priceOf(r.modelId);
        ModelRegistry.Model memory m = models.model(r.modelId);
        uint256 rest = r.fee - price;
        uint256 each = rest / r.k;
        pay(m.owner, price);
        for (uint256 i = 0; i < winners.length; i++) {
            pay(winners[i], i == 0 ? rest - each * (r.k - 1) : each);
        }
        emit Finalized(id, inp, out, winners);
        if (r.client.code.length > 0) {
            try IVerityConsumer(r.client).onVerityResult{gas: CALLBACK_GAS}(id, out) {}
            catch {
                emit CallbackFailed(id);
            }
        }
    }

    /// @notice After the deadline, refund an unfinished request and slash the assigned nodes that sent no
    ///         receipt (the slashed stake goes to the client as well).
    function timeout(uint256 id) external {
        Request storage r = requests[id];
        if (r.status != Status.Pending) revert NotPending();
        if (block.timestamp <= r.deadline) revert TooEarly();
        r.status = Status.Refunded;
        address[] memory a;
        // If the seed block has fallen out of reach, nobody can be held responsible.
        if (Assignment.seedKnown(r.seedBlock)) a = assignment(id);
        uint256 silentCount;
        address[] memory silent = new address[](a.length);
        uint256 compensation;
        for (uint256 i = 0; i < a.length; i++) {
            if (submitted[id][a[i]] == bytes32(0) && (r.mode == Mode.Signed || i < r.k)) {
                silent[silentCount++] = a[i];
                compensation += nodes.slash(a[i], timeoutPenalty);
            }
        }
        assembly {
            mstore(silent, silentCount)
        }
        uint256 amount = r.fee + compensation;
        refundOf[id] = amount;
        pay(r.client, amount);
        emit Refunded(id, amount, silent);
    }

    /// Receives slashed stake from the node registry.
    receive() external payable {
        if (msg.sender != address(nodes)) revert TransferFailed();
    }
}
