// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Verity model registry
/// @notice Maps canonical model IDs (the keccak Merkle commitment of a `.vty` model) to their owner,
///         name, version, signed-manifest hash and price per inference. The first account to register a
///         name owns it; only that owner adds versions under it or changes a model's price. A model ID is
///         registered once and a (name, version) pair never changes. There is no administrator.
contract ModelRegistry {
    struct Model {
        address owner;
        uint64 registeredAt;
        bytes32 manifestHash;
        uint256 pricePerInference;
        string name;
        string version;
    }

    mapping(bytes32 => Model) private models;
    mapping(bytes32 => address) public nameOwner;
    /// keccak256(name) => keccak256(version) => model ID
    mapping(bytes32 => mapping(bytes32 => bytes32)) private versions;
    mapping(bytes32 => bytes32) private latestOf;

    event ModelRegistered(
        bytes32 indexed modelId, address indexed owner, string name, string version, bytes32 manifestHash, uint256 price
    );
    event PriceChanged(bytes32 indexed modelId, uint256 price);

    error ZeroModelId();
    error AlreadyRegistered(bytes32 modelId);
    error VersionTaken(bytes32 existing);
    error NotNameOwner(address owner);
    error NotModelOwner(address owner);
    error UnknownModel(bytes32 modelId);
    error BadName();

    /// @notice Register `modelId` under `name`, version `version`. `name` and `version` follow the manifest rules
    ///         (1–64 / 1–32 characters of [A-Za-z0-9._-], version also '+', starting alphanumeric).
    function register(
        bytes32 modelId,
        string calldata name,
        string calldata version,
        bytes32 manifestHash,
        uint256 pricePerInference
    ) external {
        if (modelId == bytes32(0)) revert ZeroModelId();
        if (!validIdent(bytes(name), 64, false) || !validIdent(bytes(version), 32, true)) revert BadName();
        if (models[modelId].owner != address(0)) revert AlreadyRegistered(modelId);
        bytes32 n = keccak256(bytes(name));
        address owner = nameOwner[n];
        if (owner == address(0)) {
            nameOwner[n] = msg.sender;
        } else if (owner != msg.sender) {
            revert NotNameOwner(owner);
        }
        bytes32 v = keccak256(bytes(version));
        bytes32 existing = versions[n][v];
        if (existing != bytes32(0)) revert VersionTaken(existing);
        versions[n][v] = modelId;
        latestOf[n] = modelId;
        models[modelId] = Model({
            owner: msg.sender,
            registeredAt: uint64(block.timestamp),
            manifestHash: manifestHash,
            pricePerInference: pricePerInference,
            name: name,
            version: version
        });
        emit ModelRegistered(modelId, msg.sender, name, version, manifestHash, pricePerInference);
    }

    /// @notice Change the price of a model (its owner only).
    function setPrice(bytes32 modelId, uint256 price) external {
        address owner = models[modelId].owner;
        if (owner == address(0)) revert UnknownModel(modelId);
        if (owner != msg.sender) revert NotModelOwner(owner);
        models[modelId].pricePerInference = price;
        emit PriceChanged(modelId, price);
    }

    function model(bytes32 modelId) external view returns (Model memory) {
        return models[modelId];
    }

    function exists(bytes32 modelId) external view returns (bool) {
        return models[modelId].owner != address(0);
    }

    function priceOf(bytes32 modelId) external view returns (uint256) {
        if (models[modelId].owner == address(0)) revert UnknownModel(modelId);
        return models[modelId].pricePerInference;
    }

    /// @notice The model registered under `name`, version `version` (zero if none).
    function resolve(string calldata name, string calldata version) external view returns (bytes32) {
        return versions[keccak256(bytes(name))][keccak256(bytes(version))];
    }

    /// @notice The most recently registered version of `name` (zero if none).
    function latest(string calldata name) external view returns (bytes32) {
        return latestOf[keccak256(bytes(name))];
    }

    function validIdent(bytes calldata s, uint256 max, bool plus) internal pure returns (bool) {
        if (s.length == 0 || s.length > max) return false;
        for (uint256 i = 0; i < s.length; i++) {
            bytes1 c = s[i];
            bool alnum = (c >= "0" && c <= "9") || (c >= "a" && c <= "z") || (c >= "A" && c <= "Z");
            if (i == 0 && !alnum) return false;
            if (!alnum && c != "." && c != "_" && c != "-" && !(plus && c == "+")) return false;
        }
        return true;
    }
}
