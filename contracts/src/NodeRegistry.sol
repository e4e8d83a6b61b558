// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Verity node registry
/// @notice Nodes register an HTTP endpoint and put up stake (native currency). Stake leaves only through
///         unbonding, after a delay fixed at deployment, and stays slashable while it unbonds. Stake can be
///         slashed only by Verity's verification contracts, wired once by the deploying factory in the
///         deployment itself; no account holds any power afterwards.
///
///         Every stake change is checkpointed by block, so a hub draws a request's nodes from the stakes as
///         they were when the request was made (`stakeAt`): nothing done after the request — a top-up, an
///         unbonding, a slash — changes who is assigned. A hub can lock part of a node's stake as the
///         collateral of an answer (`lock`); locked stake cannot be moved to unbonding for one to two
///         unbonding delays (locks are kept in buckets of one delay each).
contract NodeRegistry {
    struct Node {
        bool registered;
        uint64 registeredAt;
        uint64 unbondAt;
        uint256 stake;
        uint256 unbonding;
        string endpoint;
    }

    uint256 public immutable minStake;
    uint64 public immutable unbondingDelay;
    address public immutable wirer;
    bool public wired;
    mapping(address => bool) public isSlasher;

    /// A node's stake from block `blockNumber` on.
    struct Checkpoint {
        uint64 blockNumber;
        uint192 stake;
    }

    mapping(address => Node) private nodes;
    mapping(address => Checkpoint[]) private history;
    /// node => lock bucket (timestamp / unbondingDelay) => collateral locked until that bucket ends
    mapping(address => mapping(uint256 => uint256)) private lockedIn;
    address[] private nodeList;
    /// model ID => nodes that announced they host it (any order)
    mapping(bytes32 => address[]) private hostList;
    /// model ID => node => position in hostList + 1 (0: not hosting)
    mapping(bytes32 => mapping(address => uint256)) private hostSlot;

    event NodeRegistered(address indexed node, string endpoint, uint256 stake);
    event EndpointChanged(address indexed node, string endpoint);
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event UnbondRequested(address indexed node, uint256 amount, uint64 unbondAt);
    event Withdrawn(address indexed node, uint256 amount);
    event Slashed(address indexed node, uint256 amount, address indexed by);
    event SlashersWired(address[] slashers);
    event HostingChanged(address indexed node, bytes32 indexed modelId, bool hosting);
    event Locked(address indexed node, uint256 amount, uint256 locked, address indexed by);

    error AlreadyRegistered();
    error NotRegistered();
    error StakeTooLow(uint256 minStake);
    error BadEndpoint();
    error AmountTooLarge(uint256 available);
    error StillUnbonding(uint64 unbondAt);
    error NothingToWithdraw();
    error NotSlasher();
    error AlreadyWired();
    error NotWirer();
    error TransferFailed();
    error StakeLocked(uint256 locked);
    error BadDelay();
    error InsufficientFreeStake(uint256 free);

    constructor(uint256 minStake_, uint64 unbondingDelay_) {
        if (unbondingDelay_ == 0) revert BadDelay();
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
        wirer = msg.sender;
    }

    /// @notice Name the contracts allowed to slash; callable once, by the deployer, at deployment.
    function wireSlashers(address[] calldata slashers) external {
        if (msg.sender != wirer) revert NotWirer();
        if (wired) revert AlreadyWired();
        wired = true;
        for (uint256 i = 0; i < slashers.length; i++) {
            isSlasher[slashers[i]] = true;
        }
        emit SlashersWired(slashers);
    }

    function register(string calldata endpoint) external payable {
        Node storage n = nodes[msg.sender];
        if (n.registered) revert AlreadyRegistered();
        if (msg.value < minStake) revert StakeTooLow(minStake);
        checkEndpoint(endpoint);
        n.registered = true;
        n.registeredAt = uint64(block.timestamp);
        n.stake = msg.value;
        n.endpoint = endpoint;
        nodeList.push(msg.sender);
        checkpoint(msg.sender, n.stake);
        emit NodeRegistered(msg.sender, endpoint, msg.value);
    }

    function setEndpoint(string calldata endpoint) external {
        Node storage n = nodes[msg.sender];
        if (!n.registered) revert NotRegistered();
        checkEndpoint(endpoint);
        n.endpoint = endpoint;
        emit EndpointChanged(msg.sender, endpoint);
    }

    function addStake() external payable {
        Node storage n = nodes[msg.sender];
        if (!n.registered) revert NotRegistered();
        n.stake += msg.value;
        checkpoint(msg.sender, n.stake);
        emit StakeAdded(msg.sender, msg.value, n.stake);
    }

    /// @notice Move `amount` of stake to unbonding; it can be withdrawn `unbondingDelay` seconds after the
    ///         latest request, and remains slashable until then.
    function requestUnbond(uint256 amount) external {
        Node storage n = nodes[msg.sender];
        if (!n.registered) revert NotRegistered();
        if (amount > n.stake) revert AmountTooLarge(n.stake);
        uint256 held = locked(msg.sender);
        if (n.stake - amount < held) revert StakeLocked(held);
        n.stake -= amount;
        checkpoint(msg.sender, n.stake);
        n.unbonding += amount;
        n.unbondAt = uint64(block.timestamp) + unbondingDelay;
        emit UnbondRequested(msg.sender, amount, n.unbondAt);
    }

    function withdraw() external {
        Node storage n = nodes[msg.sender];
        uint256 amount = n.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < n.unbondAt) revert StillUnbonding(n.unbondAt);
        n.unbonding = 0;
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
        emit Withdrawn(msg.sender, amount);
    }

    /// @notice Take up to `amount` from a node's stake, then from its unbonding funds, and send it to the
    ///         calling verification contract (which pays the winner of a dispute). Returns what was taken.
    function slash(address node, uint256 amount) external returns (uint256 taken) {
        if (!isSlasher[msg.sender]) revert NotSlasher();
        Node storage n = nodes[node];
        uint256 fromStake = amount < n.stake ? amount : n.stake;
        n.stake -= fromStake;
        if (fromStake > 0) checkpoint(node, n.stake);
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < n.unbonding ? rest : n.unbonding;
        n.unbonding -= fromUnbonding;
        taken = fromStake + fromUnbonding;
        if (taken > 0) {
            (bool ok,) = msg.sender.call{value: taken}("");
            if (!ok) revert TransferFailed();
        }
        emit Slashed(node, taken, msg.sender);
    }

    /// @notice Lock `amount` of `who`'s stake as the collateral of an answer, for at least one unbonding
    ///         delay (at most two). Reverts if the stake not yet locked is smaller. Only the hubs lock.
    function lock(address who, uint256 amount) external {
        if (!isSlasher[msg.sender]) revert NotSlasher();
        if (amount == 0) return;
        uint256 held = locked(who);
        uint256 stake = nodes[who].stake;
        if (stake < held + amount) revert InsufficientFreeStake(stake > held ? stake - held : 0);
        lockedIn[who][block.timestamp / unbondingDelay + 1] += amount;
        emit Locked(who, amount, held + amount, msg.sender);
    }

    /// @notice Collateral of `who` locked now (it cannot be unbonded).
    function locked(address who) public view returns (uint256) {
        uint256 b = block.timestamp / unbondingDelay;
        return lockedIn[who][b] + lockedIn[who][b + 1];
    }

    /// @notice `who`'s stake at the end of block `blockNumber` (zero before it registered).
    function stakeAt(address who, uint256 blockNumber) public view returns (uint256) {
        Checkpoint[] storage h = history[who];
        uint256 lo = 0;
        uint256 hi = h.length;
        while (lo < hi) {
            uint256 mid = (lo + hi) / 2;
            if (h[mid].blockNumber <= blockNumber) lo = mid + 1;
            else hi = mid;
        }
        return lo == 0 ? 0 : h[lo - 1].stake;
    }

    /// @notice Whether `who` was active (registered, at least the minimum stake) at the end of block
    ///         `blockNumber`.
    function isActiveAt(address who, uint256 blockNumber) public view returns (bool) {
        return stakeAt(who, blockNumber) >= minStake;
    }

    function checkpoint(address who, uint256 stake) internal {
        Checkpoint[] storage h = history[who];
        uint64 b = uint64(block.number);
        uint192 s = uint192(stake); // total native currency is far below 2^192
        if (h.length > 0 && h[h.length - 1].blockNumber == b) h[h.length - 1].stake = s;
        else h.push(Checkpoint(b, s));
    }

    function node(address who) external view returns (Node memory) {
        return nodes[who];
    }

    function stakeOf(address who) external view returns (uint256) {
        return nodes[who].stake;
    }

    /// @notice Registered with at least the minimum stake.
    function isActive(address who) public view returns (bool) {
        return nodes[who].registered && nodes[who].stake >= minStake;
    }

    /// @notice Every node ever registered, in registration order (filter with `isActive`).
    function allNodes() external view returns (address[] memory) {
        return nodeList;
    }

    function nodeCount() external view returns (uint256) {
        return nodeList.length;
    }

    /// @notice Announce that this node serves model `modelId` (its chunks, for replication, and
    ///         inference), or stop announcing it. Only registered nodes announce.
    function setHosting(bytes32 modelId, bool hosting) external {
        if (!nodes[msg.sender].registered) revert NotRegistered();
        uint256 slot = hostSlot[modelId][msg.sender];
        address[] storage list = hostList[modelId];
        if (hosting && slot == 0) {
            list.push(msg.sender);
            hostSlot[modelId][msg.sender] = list.length;
        } else if (!hosting && slot != 0) {
            address last = list[list.length - 1];
            list[slot - 1] = last;
            hostSlot[modelId][last] = slot;
            list.pop();
            hostSlot[modelId][msg.sender] = 0;
        } else {
            return;
        }
        emit HostingChanged(msg.sender, modelId, hosting);
    }

    /// @notice The nodes announcing model `modelId` (filter with `isActive`).
    function hostsOf(bytes32 modelId) external view returns (address[] memory) {
        return hostList[modelId];
    }

    function isHosting(bytes32 modelId, address who) external view returns (bool) {
        return hostSlot[modelId][who] != 0;
    }

    function checkEndpoint(string calldata endpoint) internal pure {
        uint256 len = bytes(endpoint).length;
        if (len == 0 || len > 256) revert BadEndpoint();
    }
}
