// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "../InferenceHub.sol";

/// Tensor types of the OpenGradient inference ABI (field order and types fixed by that ABI).
library TensorLib {
    struct Number {
        int128 value;
        int128 decimals;
    }

    struct MultiDimensionalNumberTensor {
        string name;
        Number[] values;
        uint32[] shape;
    }

    struct StringTensor {
        string name;
        string[] values;
    }

    struct JsonScalar {
        string name;
        string value;
    }
}

enum ModelInferenceMode {
    VANILLA,
    ZK,
    TEE
}

struct ModelInput {
    TensorLib.MultiDimensionalNumberTensor[] numbers;
    TensorLib.StringTensor[] strings;
}

struct ModelOutput {
    TensorLib.MultiDimensionalNumberTensor[] numbers;
    TensorLib.StringTensor[] strings;
    TensorLib.JsonScalar[] jsons;
    bool is_simulation_result;
}

struct ModelInferenceRequest {
    ModelInferenceMode mode;
    string modelCID;
    ModelInput input;
}

/// @title The event source OpenGradient clients read inference IDs from
/// @notice Its runtime code is placed at 0x00000000000000000000000000000000000000F4 (`anvil_setCode` on a
///         devnet). It keeps no state; `OpenGradientInference` calls it so that the request and its inference
///         ID appear in the transaction's logs under that address, where the OpenGradient SDK looks.
contract OpenGradientEvents {
    event ModelInferenceEvent(string inferenceID, ModelInferenceRequest request, ModelOutput response);

    function announce(string calldata inferenceID, ModelInferenceRequest calldata request) external {
        ModelOutput memory empty;
        emit ModelInferenceEvent(inferenceID, request, empty);
    }
}

/// @title OpenGradient-compatible front door to Verity's InferenceHub
/// @notice `run(modelId, mode, input)` as the OpenGradient SDK calls it. The model is a Verity model ID
///         (`0x` + 64 hex digits), a name and version joined by an at sign, or a name (latest version). The input travels in the
///         transaction; its canonical hash is named by the nodes' receipts (the hub request has input hash
///         zero and input URI `opengradient:<inferenceID>`, meaning "the ModelInferenceEvent with that ID in
///         the request's transaction"). VANILLA becomes a `signed` request, ZK and TEE a `quorum` request of
///         `quorumK` nodes. The inference ID is the hub request ID in decimal; the result is read from any
///         Verity node at `/artela-network/artela-rollkit/inference/tx/{id}`, which answers only with an output
///         whose hash equals the one finalized on-chain. Fees (the hub's price times the nodes needed) come
///         with the call or from the caller's deposit here; a refund from a timed-out request goes back to
///         the caller's deposit.
contract OpenGradientInference is IVerityConsumer {
    address public constant EVENTS = address(0xF4);

    InferenceHub public immutable hub;
    ModelRegistry public immutable models;
    uint8 public immutable quorumK;

    mapping(address => uint256) public deposits;
    mapping(uint256 => address) public requester;
    mapping(uint256 => uint256) public paid;
    mapping(uint256 => bytes32) public outputOf;

    event InferenceResult(ModelOutput output);
    event Deposited(address indexed who, uint256 amount);
    event Withdrawn(address indexed who, uint256 amount);
    event Completed(uint256 indexed requestId, bytes32 outputHash);
    event Reclaimed(uint256 indexed requestId, address indexed who, uint256 amount);

    error UnknownModel(string modelId);
    error InsufficientFunds(uint256 required, uint256 available);
    error NotHub();
    error NotRefunded();
    error NothingToWithdraw();
    error TransferFailed();

    constructor(InferenceHub hub_, uint8 quorumK_) {
        hub = hub_;
        models = hub_.models();
        quorumK = quorumK_;
    }

    function deposit() external payable {
        deposits[msg.sender] += msg.value;
        emit Deposited(msg.sender, msg.value);
    }

    function withdraw() external {
        uint256 amount = deposits[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        deposits[msg.sender] = 0;
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
        emit Withdrawn(msg.sender, amount);
    }

    function run(string calldata modelId, ModelInferenceMode inferenceMode, ModelInput calldata modelInput)
        external
        payable
        returns (ModelOutput memory output)
    {
        string memory inferenceID = place(modelId, inferenceMode);
        OpenGradientEvents(EVENTS).announce(inferenceID, ModelInferenceRequest(inferenceMode, modelId, modelInput));
        emit InferenceResult(output);
    }

    /// Charge the fee and place the hub request; returns its inference ID.
    function place(string calldata modelId, ModelInferenceMode inferenceMode) internal returns (string memory) {
        bytes32 id = resolve(modelId);
        if (id == bytes32(0) || !models.exists(id)) revert UnknownModel(modelId);
        InferenceHub.Mode mode =
            inferenceMode == ModelInferenceMode.VANILLA ? InferenceHub.Mode.Signed : InferenceHub.Mode.Quorum;
        uint8 k = mode == InferenceHub.Mode.Signed ? 1 : quorumK;
        uint256 fee = models.priceOf(id) * k;
        uint256 available = deposits[msg.sender] + msg.value;
        if (available < fee) revert InsufficientFunds(fee, available);
        deposits[msg.sender] = available - fee;
        uint256 rid = hub.requestCount() + 1;
        string memory inferenceID = decimal(rid);
        uint256 got = hub.request{value: fee}(id, bytes32(0), string.concat("opengradient:", inferenceID), mode, k);
        assert(got == rid);
        requester[rid] = msg.sender;
        paid[rid] = fee;
        return inferenceID;
    }

    /// Called by the hub when a request finalizes.
    function onVerityResult(uint256 requestId, bytes32 outputHash) external {
        if (msg.sender != address(hub)) revert NotHub();
        outputOf[requestId] = outputHash;
        emit Completed(requestId, outputHash);
    }

    /// @notice Time out an unanswered request (if still pending) and credit its refund, including the
    ///         penalties taken from silent nodes, to the deposit of whoever asked. Works whoever called
    ///         the hub's `timeout`: the amount is the hub's record of what it refunded.
    function reclaim(uint256 requestId) external {
        if (hub.getRequest(requestId).status == InferenceHub.Status.Pending) hub.timeout(requestId);
        if (hub.getRequest(requestId).status != InferenceHub.Status.Refunded) revert NotRefunded();
        address who = requester[requestId];
        uint256 amount = hub.refundOf(requestId);
        if (amount == 0 || who == address(0)) revert NotRefunded();
        requester[requestId] = address(0);
        deposits[who] += amount;
        emit Reclaimed(requestId, who, amount);
    }

    receive() external payable {
        if (msg.sender != address(hub)) revert NotHub();
    }

    function resolve(string calldata s) internal view returns (bytes32) {
        bytes calldata b = bytes(s);
        if (b.length == 66 && b[0] == "0" && (b[1] == "x" || b[1] == "X")) {
            uint256 v;
            for (uint256 i = 2; i < 66; i++) {
                uint8 c = uint8(b[i]);
                uint8 d;
                if (c >= 48 && c <= 57) d = c - 48;
                else if (c >= 97 && c <= 102) d = c - 87;
                else if (c >= 65 && c <= 70) d = c - 55;
                else return bytes32(0);
                v = (v << 4) | d;
            }
            return bytes32(v);
        }
        for (uint256 i = 0; i < b.length; i++) {
            if (b[i] == "@") return models.resolve(string(b[:i]), string(b[i + 1:]));
        }
        return models.latest(s);
    }

    function decimal(uint256 v) internal pure returns (string memory) {
        if (v == 0) return "0";
        uint256 len;
        for (uint256 t = v; t != 0; t /= 10) len++;
        bytes memory out = new bytes(len);
        for (; v != 0; v /= 10) out[--len] = bytes1(uint8(48 + v % 10));
        return string(out);
    }
}
