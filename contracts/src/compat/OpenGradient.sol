// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "../InferenceHub.sol";
import "../Merkle.sol";

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
///         transaction, and this contract fixes its canonical hash: the model's owner states once, with
///         `setInputSpec`, each input's name, element count, scale and kind; `run` quantizes every number
///         exactly (`quantize`: `floor(value·2^scale/10^decimals + 1/2)`, or the whole number for an integer
///         input) and hashes the tensors as the engine does, so the hub request carries that input hash and
///         no node can answer for another input. The input URI is `opengradient:<inferenceID>`, meaning
///         "the ModelInferenceEvent with that ID in the request's transaction". VANILLA becomes a `signed` request, ZK and TEE a `quorum` request of
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

    /// A model's inputs, in model order, as its owner states them.
    struct InputSpec {
        string[] names;
        uint64[] counts;
        int8[] scales;
        bool[] ints;
    }

    mapping(bytes32 => InputSpec) internal specs;

    event InferenceResult(ModelOutput output);
    event Deposited(address indexed who, uint256 amount);
    event Withdrawn(address indexed who, uint256 amount);
    event Completed(uint256 indexed requestId, bytes32 outputHash);
    event Reclaimed(uint256 indexed requestId, address indexed who, uint256 amount);

    event InputSpecSet(bytes32 indexed modelId);

    // What a caller of `run` can get wrong is reverted with a sentence (`Error(string)`), which every
    // client shows as text (web3.py, ethers, the OpenGradient SDK); custom errors would reach them as hex.
    error NotModelOwner();
    error BadSpec(string why);
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

    /// @notice The model's owner states its inputs (model order): names, element counts, scales
    ///         (fractional bits, −32…64) and whether each is an integer input (token IDs, indices).
    ///         Requests placed afterwards are hashed with it; a wrong statement only makes nodes decline
    ///         (and the requester is refunded).
    function setInputSpec(
        bytes32 modelId,
        string[] calldata names,
        uint64[] calldata counts,
        int8[] calldata scales,
        bool[] calldata ints
    ) external {
        if (models.model(modelId).owner != msg.sender) revert NotModelOwner();
        uint256 n = names.length;
        if (n == 0 || counts.length != n || scales.length != n || ints.length != n) revert BadSpec("lengths");
        InputSpec storage s = specs[modelId];
        delete s.names;
        delete s.counts;
        delete s.scales;
        delete s.ints;
        for (uint256 i = 0; i < n; i++) {
            if (counts[i] == 0) revert BadSpec("an input has no elements");
            if (scales[i] < -32 || scales[i] > 64) revert BadSpec("scale out of -32..64");
            s.names.push(names[i]);
            s.counts.push(counts[i]);
            s.scales.push(scales[i]);
            s.ints.push(ints[i]);
        }
        emit InputSpecSet(modelId);
    }

    function inputSpec(bytes32 modelId)
        external
        view
        returns (string[] memory, uint64[] memory, int8[] memory, bool[] memory)
    {
        InputSpec storage s = specs[modelId];
        return (s.names, s.counts, s.scales, s.ints);
    }

    function run(string calldata modelId, ModelInferenceMode inferenceMode, ModelInput calldata modelInput)
        external
        payable
        returns (ModelOutput memory output)
    {
        bytes32 id = resolve(modelId);
        if (id == bytes32(0) || !models.exists(id)) {
            revert(
                string.concat(
                    "OpenGradientInference: unknown model '",
                    modelId,
                    "' (no such model ID, name@version or name in the ModelRegistry)"
                )
            );
        }
        string memory inferenceID = place(id, inferenceMode, canonicalInputHash(id, modelInput));
        OpenGradientEvents(EVENTS).announce(inferenceID, ModelInferenceRequest(inferenceMode, modelId, modelInput));
        emit InferenceResult(output);
    }

    /// @notice The canonical input hash of `input` for model `modelId` (docs/spec/canonical.md §8): each
    ///         tensor, matched to the model's inputs by name, quantized element by element with `quantize`
    ///         and packed eight to a word; its root is its element count bound to the tree of its word
    ///         hashes, and the input hash is the list root of those.
    function canonicalInputHash(bytes32 modelId, ModelInput calldata input) public view returns (bytes32) {
        InputSpec storage s = specs[modelId];
        uint256 n = s.names.length;
        if (n == 0) {
            revert(
                "OpenGradientInference: the model's inputs are not stated yet (its owner states them with setInputSpec, which `verity model register` does)"
            );
        }
        if (input.strings.length != 0) badInput("string tensors are not canonical inputs");
        if (input.numbers.length != n) badInput("not one tensor per model input");
        bytes32[] memory roots = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) {
            bytes32 name = keccak256(bytes(s.names[i]));
            uint256 j = 0;
            while (j < n && keccak256(bytes(input.numbers[j].name)) != name) j++;
            if (j == n) badInput("a model input is missing");
            roots[i] = tensorRoot(input.numbers[j].values, s.counts[i], s.scales[i], s.ints[i]);
        }
        return Merkle.listRoot(roots);
    }

    function tensorRoot(TensorLib.Number[] calldata values, uint64 count, int8 scale, bool isInt)
        internal
        pure
        returns (bytes32)
    {
        if (values.length != count) badInput("an input has the wrong number of elements");
        bytes32[] memory leaves = new bytes32[]((uint256(count) + 7) / 8);
        unchecked {
            for (uint256 w = 0; w < leaves.length; w++) {
                uint256 word;
                for (uint256 k = 0; k < 8 && 8 * w + k < count; k++) {
                    TensorLib.Number calldata x = values[8 * w + k];
                    int32 q = quantize(x.value, x.decimals, scale, isInt);
                    word |= uint256(uint32(q)) << (224 - 32 * k);
                }
                leaves[w] = keccak256(abi.encodePacked(word));
            }
        }
        return Merkle.bindLength(count, Merkle.treeRoot(leaves));
    }

    /// @notice An OpenGradient number `value · 10^-decimals` as a model input's canonical integer, exactly
    ///         as a Verity node computes it: first the float32 nearest to it (ties to even; OpenGradient
    ///         inputs are float32 tensors written as their shortest decimals), then `floor(x·2^scale + 1/2)`
    ///         for a real input (the engine's rounding) or `x` itself for an integer input (refused unless
    ///         whole and within ±(2^31 − 1)). `decimals` in 0…60, a real input's scale in −32…64.
    function quantize(int128 value, int128 decimals, int8 scale, bool isInt) public pure returns (int32) {
        if (decimals < 0 || decimals > 60) badInput("decimals out of 0..60");
        if (!isInt && (scale < -32 || scale > 64)) badInput("scale out of -32..64");
        (uint256 kind, bool neg, uint256 m, int256 e) = nearestF32(value, uint256(int256(decimals)));
        if (kind == 0) return 0;
        if (kind == 1) {
            if (isInt) badInput("not a whole number");
            return 0;
        }
        uint256 most = (1 << 31) - 1;
        if (isInt) {
            if (e >= 0) {
                if (e > 8) badInput("out of the 32-bit range");
                return signed(neg, m << uint256(e), most);
            }
            uint256 sh = uint256(-e);
            if (sh >= 24 || m % (1 << sh) != 0) badInput("not a whole number");
            return signed(neg, m >> sh, most);
        }
        // m < 2^24, |e| < 2^9, k ≤ 120: nothing below can overflow
        unchecked {
            int256 t = e + int256(scale);
            if (t >= 0) {
                if (t > 8) badInput("out of the 32-bit range");
                return signed(neg, m << uint256(t), neg ? most + 1 : most);
            }
            // x·2^scale = m / 2^k
            uint256 k = uint256(-t);
            if (k > 120) return 0;
            uint256 a = 2 * m;
            uint256 half = 1 << k;
            if (!neg) return signed(false, (a + half) >> (k + 1), most);
            // floor(−y + 1/2) = −ceil((2m − 2^k) / 2^(k+1)), 0 when 2m ≤ 2^k
            if (a <= half) return 0;
            return signed(true, (a - half + (1 << (k + 1)) - 1) >> (k + 1), most + 1);
        }
    }

    function signed(bool neg, uint256 mag, uint256 limit) internal pure returns (int32) {
        if (mag > limit) badInput("out of the 32-bit range");
        return neg ? int32(-int256(mag)) : int32(int256(mag));
    }

    /// The float32 nearest to `value · 10^-decimals`: kind 0 (zero), 1 (not zero but below 2^-100, where
    /// every allowed scale rounds it to 0) or 2 (`±m · 2^e`, 2^23 ≤ m < 2^24).
    function nearestF32(int128 value, uint256 decimals)
        internal
        pure
        returns (uint256 kind, bool neg, uint256 m, int256 e)
    {
        neg = value < 0;
        uint256 n = neg ? uint256(-int256(value)) : uint256(int256(value));
        uint256 d;
        unchecked {
            d = 10 ** decimals; // decimals ≤ 60: 10^60 < 2^200
        }
        if (n == 0) return (0, false, 0, 0);
        if ((n << 100) < d) {
            // at or below 2^-150 a float32 is 0 (the tie at 2^-150 goes to the even 0)
            bool zero = bitLength(n) + 150 <= 256 && (n << 150) <= d;
            return (zero ? 0 : 1, neg, 0, 0);
        }
        uint256 rem;
        uint256 den;
        // every value here is far from 2^255: n < 2^128, d < 2^200, shifts keep both under 2^240
        unchecked {
            e = int256(bitLength(n)) - int256(bitLength(d)) - 24;
            (m, rem, den) = divShift(n, d, e);
            while (m >= 1 << 24) {
                e++;
                (m, rem, den) = divShift(n, d, e);
            }
            while (m < 1 << 23) {
                e--;
                (m, rem, den) = divShift(n, d, e);
            }
            if (2 * rem > den || (2 * rem == den && m & 1 == 1)) m++;
            if (m == 1 << 24) {
                m = 1 << 23;
                e++;
            }
        }
        if (e > 104) badInput("not a finite float32");
        kind = 2;
    }

    /// floor(n · 2^-e / d), its remainder and denominator.
    function divShift(uint256 n, uint256 d, int256 e) internal pure returns (uint256, uint256, uint256) {
        unchecked {
            (uint256 num, uint256 den) = e <= 0 ? (n << uint256(-e), d) : (n, d << uint256(e));
            return (num / den, num % den, den);
        }
    }

    function bitLength(uint256 x) internal pure returns (uint256 r) {
        unchecked {
            if (x >> 128 != 0) (x, r) = (x >> 128, 128);
            if (x >> 64 != 0) (x, r) = (x >> 64, r + 64);
            if (x >> 32 != 0) (x, r) = (x >> 32, r + 32);
            if (x >> 16 != 0) (x, r) = (x >> 16, r + 16);
            if (x >> 8 != 0) (x, r) = (x >> 8, r + 8);
            if (x >> 4 != 0) (x, r) = (x >> 4, r + 4);
            if (x >> 2 != 0) (x, r) = (x >> 2, r + 2);
            if (x >> 1 != 0) (x, r) = (x >> 1, r + 1);
            if (x != 0) r += 1;
        }
    }

    /// Revert: the caller's input cannot be quantized canonically, for the reason `why`.
    function badInput(string memory why) internal pure {
        revert(string.concat("OpenGradientInference: bad input: ", why));
    }

    /// Charge the fee and place the hub request for input hash `inputHash`; returns its inference ID.
    function place(bytes32 id, ModelInferenceMode inferenceMode, bytes32 inputHash) internal returns (string memory) {
        InferenceHub.Mode mode =
            inferenceMode == ModelInferenceMode.VANILLA ? InferenceHub.Mode.Signed : InferenceHub.Mode.Quorum;
        uint8 k = mode == InferenceHub.Mode.Signed ? 1 : quorumK;
        uint256 fee = models.priceOf(id) * k;
        uint256 available = deposits[msg.sender] + msg.value;
        if (available < fee) {
            revert(
                string.concat(
                    "OpenGradientInference: the fee is ",
                    decimal(fee),
                    " wei but only ",
                    decimal(available),
                    " wei was sent or deposited"
                )
            );
        }
        deposits[msg.sender] = available - fee;
        uint256 rid = hub.requestCount() + 1;
        string memory inferenceID = decimal(rid);
        uint256 got = hub.request{value: fee}(id, inputHash, string.concat("opengradient:", inferenceID), mode, k);
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

    /// @notice Time out an unanswered request (if still pending) and credit its refund (the fee; penalties
    ///         taken from silent nodes are burned) to the deposit of whoever asked. Works whoever called
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
        for (uint256 t = v; t != 0; t /= 10) {
            len++;
        }
        bytes memory out = new bytes(len);
        for (; v != 0; v /= 10) {
            out[--len] = bytes1(uint8(48 + v % 10));
        }
        return string(out);
    }
}
