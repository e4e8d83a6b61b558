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
///         the nodes' receipts then name it, and a quorum must agree on it too.
///
///         Nobody profits from a request failing (docs/spec/economics.md). Assignment uses the stakes of the
///         request's own block, fixed before the seed is known, and the seed is stored on first use so it
///         outlives the 256 blocks of `blockhash`. An assigned node that cannot serve (input unavailable or
///         not matching its hash, model not hosted) says so with `decline` and loses nothing; when too few
///         nodes remain the request is refunded at once. After the response window an unfinished request
///         refunds the client its fee — only its fee — and the assigned nodes that neither answered nor
///         declined are slashed `timeoutPenalty`, which is burned (kept here for good), never paid to the
///         client who could have caused the failure. A request may ask for `collateral`: only nodes whose
///         stake covered it are drawn, and each accepted receipt locks that much of its node's stake. Every
///         accepted receipt (with its signature, in `ReceiptAccepted`) can be disputed in the
///         OptimisticHub, where a node that loses the game loses its whole stake.
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
        uint256 collateral;
        bytes32 seed;
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
    /// request => what its client got back (its fee) when it failed
    mapping(uint256 => uint256) public refundOf;
    /// request => node => declined to serve it
    mapping(uint256 => mapping(address => bool)) public declined;
    mapping(uint256 => uint256) public declines;
    /// Penalties of silent nodes, kept out of reach for good.
    uint256 public burned;

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
    /// The whole receipt and its signature, so that anyone can dispute it in the OptimisticHub.
    event ReceiptAccepted(
        uint256 indexed requestId,
        address indexed node,
        bytes32 outputHash,
        bytes32 traceRoot,
        bytes32 inputHash,
        uint64 timestamp,
        bytes signature
    );
    event Declined(uint256 indexed requestId, address indexed node, string reason);
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
    event Refunded(uint256 indexed requestId, uint256 amount, address[] silent, uint256 burned);
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
    error AlreadyDeclined();

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
        return requestWithCollateral(modelId, inputHash, inputUri, mode, k, 0);
    }

    /// @notice `request`, asking that every node drawn had at least `collateral` of stake at the request's
    ///         block and locks that much of it with its receipt (the security the request buys: a node that
    ///         loses a dispute over its receipt loses its whole stake, at least this).
    function requestWithCollateral(
        bytes32 modelId,
        bytes32 inputHash,
        string calldata inputUri,
        Mode mode,
        uint8 k,
        uint256 collateral
    ) public payable returns (uint256 id) {
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
        r.collateral = collateral;
        emit Requested(id, msg.sender, modelId, inputHash, inputUri, mode, k, msg.value, r.seedBlock, r.deadline);
    }

    function getRequest(uint256 id) external view returns (Request memory) {
        return requests[id];
    }

    /// @notice The seed of a request: keccak256(blockhash(seedBlock) ‖ id), known once seedBlock is mined;
    ///         stored on first use (any receipt, decline or `fixSeed`), so it outlives `blockhash`.
    function seedOf(uint256 id) public view returns (bytes32) {
        Request storage r = requests[id];
        if (r.status == Status.None) revert WrongRequest();
        if (r.seed != bytes32(0)) return r.seed;
        return Assignment.seed(r.seedBlock, id);
    }

    /// @notice Store a request's seed while its block hash is still available (anyone may call it).
    function fixSeed(uint256 id) public returns (bytes32 s) {
        s = seedOf(id);
        requests[id].seed = s;
    }

    /// @notice The nodes assigned to a request: `min(count, active nodes)` draws without replacement, each
    ///         picking node i with probability stake_i / remaining stake, using keccak256(seed ‖ draw) mod
    ///         the remaining stake and walking the registry's node list in order. Count is k + 2 for
    ///         quorum requests (spares for nodes that do not answer) and 1 for signed ones.
    function assignment(uint256 id) public view returns (address[] memory) {
        Request storage r = requests[id];
        return Assignment.draw(
            nodes, seedOf(id), r.mode == Mode.Signed ? 1 : uint256(r.k) + 2, r.seedBlock - 1, r.collateral
        );
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

    /// @notice An assigned node that cannot serve request `id` (its input is unavailable or does not match
    ///         the request's hash, it does not host the model, its free stake does not cover the
    ///         collateral) says so here and is not slashed for it; it earns nothing either. If too few
    ///         assigned nodes remain to answer, the client is refunded at once.
    function decline(uint256 id, string calldata reason) external {
        Request storage r = requests[id];
        if (r.status != Status.Pending) revert NotPending();
        if (block.timestamp > r.deadline) revert TooLate();
        fixSeed(id);
        address[] memory a = assignment(id);
        bool assigned;
        for (uint256 i = 0; i < a.length; i++) {
            if (a[i] == msg.sender) assigned = true;
        }
        if (!assigned) revert NotAssigned(msg.sender);
        if (submitted[id][msg.sender] != bytes32(0)) revert AlreadySubmitted();
        if (declined[id][msg.sender]) revert AlreadyDeclined();
        declined[id][msg.sender] = true;
        uint256 d = ++declines[id];
        emit Declined(id, msg.sender, reason);
        if (a.length < d + r.k) {
            r.status = Status.Refunded;
            refundOf[id] = r.fee;
            pay(r.client, r.fee);
            emit Refunded(id, r.fee, new address[](0), 0);
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
        fixSeed(id);
        if (!isAssigned(id, node)) revert NotAssigned(node);
        if (submitted[id][node] != bytes32(0)) revert AlreadySubmitted();
        if (declined[id][node]) revert AlreadyDeclined();
        nodes.lock(node, r.collateral);
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
        emit ReceiptAccepted(id, node, out, receipt.traceRoot, inp, receipt.timestamp, signature);
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

    /// @notice After the deadline, refund an unfinished request's fee to its client and slash the assigned
    ///         nodes that were needed and neither answered nor declined: the first k assigned nodes that did
    ///         not decline (a decline hands its place to the next spare). Penalties are burned.
    function timeout(uint256 id) external {
        Request storage r = requests[id];
        if (r.status != Status.Pending) revert NotPending();
        if (block.timestamp <= r.deadline) revert TooEarly();
        r.status = Status.Refunded;
        address[] memory a;
        // If nobody stored the seed while it was known, nobody can be held responsible.
        if (r.seed != bytes32(0) || Assignment.seedKnown(r.seedBlock)) a = assignment(id);
        uint256 silentCount;
        address[] memory silent = new address[](a.length);
        uint256 taken;
        uint256 needed;
        for (uint256 i = 0; i < a.length && needed < r.k; i++) {
            if (declined[id][a[i]]) continue;
            needed++;
            if (submitted[id][a[i]] == bytes32(0)) {
                silent[silentCount++] = a[i];
                taken += nodes.slash(a[i], timeoutPenalty);
            }
        }
        assembly {
            mstore(silent, silentCount)
        }
        burned += taken;
        refundOf[id] = r.fee;
        pay(r.client, r.fee);
        emit Refunded(id, r.fee, silent, taken);
    }

    /// Receives slashed stake from the node registry.
    receive() external payable {
        if (msg.sender != address(nodes)) revert TransferFailed();
    }
}
