// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./ModelRegistry.sol";
import "./NodeRegistry.sol";
import "./OneStep.sol";
import "./Merkle.sol";
import "./Assignment.sol";
import "./Payouts.sol";

/// @title Verity optimistic inference with bisection fraud proofs
/// @notice A request is answered by one node drawn by the public stake-weighted rule. It commits the output
///         hash and the trace root of the canonical execution with a bond; the result finalizes after a
///         challenge window (in blocks) unless someone proves it wrong. A challenger posts its own claim and
///         a bond; then the two bisect the committed trace — first down the trace tree to one node's
///         output, then down that tensor's word tree to one word — each move a transaction with a deadline
///         that loses the game for whoever misses it, and the last step is judged here: `OneStep`
///         recomputes one element from operands proven against the model ID and the defender's trace.
///         The loser's bond is slashed, and a defender that loses also loses its whole stake (stake and
///         unbonding funds); half of what is taken goes to the winner, the rest is burned; a winning
///         challenger's claim becomes the pending result with a fresh window. Protocol:
///         docs/spec/disputes.md; economics: docs/spec/economics.md.
///
///         The same game judges every other answer a staked node signs: the ReceiptCourt opens it
///         (`openDispute`) against a receipt signed for the InferenceHub or off-chain, once it has checked
///         the signature and the input. Assignment uses the stakes of the request's block; the seed is stored
///         on first use; an assigned node that cannot serve declines without penalty, a silent one is
///         slashed `slashAmount`, which is burned, and the client only ever gets its fee back.
contract OptimisticHub is Payouts {
    enum Status {
        None,
        Pending,
        Committed,
        Finalized,
        Refunded
    }

    struct Request {
        address client;
        Status status;
        uint64 seedBlock;
        uint64 deadline;
        uint64 windowEnd;
        uint32 openGames;
        uint32 generation;
        bytes32 modelId;
        bytes32 inputHash;
        uint256 fee;
        string inputUri;
        uint256 collateral;
        bytes32 seed;
    }

    /// The pending answer of a request: who stands behind it and what it says.
    struct Claim {
        address owner;
        bytes32 outputHash;
        bytes32 traceRoot;
        uint256 bond;
    }

    enum Stage {
        None,
        Reveal, // defender: header, trace tree, input and output roots
        Split, // defender: the two children of the current tree node
        Choose, // challenger: which child it disputes
        Open, // defender: length and word tree of the disputed node output
        Word, // defender: the disputed word
        Step, // challenger: the one-step witness for an element of that word
        Done
    }

    struct Game {
        uint256 requestId;
        address challenger;
        bytes32 outputHash;
        bytes32 traceRoot;
        uint32 generation;
        Stage stage;
        bool words; // bisecting the word tree (else the trace tree)
        uint8 depth;
        uint8 level;
        uint64 deadline;
        uint64 index;
        uint64 width;
        uint64 inputs;
        uint64 leaf; // trace leaf of the disputed tensor
        uint64 len; // its element count, as the defender opened it
        uint32 moves;
        bytes32 cur;
        bytes32 left;
        bytes32 right;
        bytes32 word;
    }

    /// The defender's first move.
    struct Reveal {
        uint64 itemCount;
        bytes32 itemRoot;
        bytes header;
        bytes32[] headerPath;
        bytes32 traceTree;
        /// Elements roots of the inputs then the outputs.
        bytes32[] roots;
        /// Path of each root: in the trace tree, or (for an output that is a constant) in the model tree.
        bytes32[][] paths;
        /// For an output that is a constant: its descriptor (empty otherwise).
        bytes[] descriptors;
    }

    ModelRegistry public immutable models;
    NodeRegistry public immutable nodes;
    OneStep public immutable oneStep;
    uint64 public immutable responseBlocks;
    uint64 public immutable challengeBlocks;
    uint64 public immutable moveBlocks;
    uint256 public immutable commitBond;
    uint256 public immutable challengeBond;
    uint256 public immutable slashAmount;
    /// May name the court, once (the deploying factory).
    address public immutable wirer;
    /// The ReceiptCourt: the only caller that opens disputes over receipts.
    address public court;

    uint256 public requestCount;
    uint256 public gameCount;
    /// Value taken from losers and not paid to anyone (kept out of reach for good).
    uint256 public burned;
    mapping(uint256 => Request) private requests;
    mapping(uint256 => Claim) public claims;
    mapping(uint256 => Game) private games;
    mapping(uint256 => uint256[]) private gamesOf;

    event Requested(
        uint256 indexed requestId,
        address indexed client,
        bytes32 indexed modelId,
        bytes32 inputHash,
        string inputUri,
        uint256 fee,
        uint64 seedBlock,
        uint64 deadline
    );
    event Committed(
        uint256 indexed requestId, address indexed node, bytes32 outputHash, bytes32 traceRoot, uint64 windowEnd
    );
    event Challenged(
        uint256 indexed requestId,
        uint256 indexed gameId,
        address indexed challenger,
        address defender,
        bytes32 outputHash,
        bytes32 traceRoot
    );
    event Revealed(uint256 indexed gameId, bytes32 traceTree, uint64 width, uint64 inputs);
    /// A claim signed with a deferred trace (trace root zero) got its trace root from the defender's reveal.
    event TraceCommitted(uint256 indexed requestId, bytes32 traceRoot);
    event Split(uint256 indexed gameId, bytes32 left, bytes32 right);
    event Chosen(uint256 indexed gameId, bool right, uint8 level, uint64 index, bool words);
    event Opened(uint256 indexed gameId, uint64 leaf, uint64 len, bytes32 tree);
    event WordRevealed(uint256 indexed gameId, uint64 index, bytes32 word);
    event GameResolved(
        uint256 indexed gameId, uint256 indexed requestId, address winner, address loser, uint32 moves, string reason
    );
    event ClaimReplaced(
        uint256 indexed requestId, address indexed owner, bytes32 outputHash, bytes32 traceRoot, uint64 windowEnd
    );
    event Finalized(uint256 indexed requestId, bytes32 outputHash, address indexed owner);
    event Refunded(uint256 indexed requestId, uint256 amount, address silent);
    event Declined(uint256 indexed requestId, address indexed node, string reason);


    error UnknownModel();
    error NeedInputHash();
    error FeeTooLow(uint256 required);
    error WrongStatus();
    error NotAssigned();
    error WrongBond(uint256 required);
    error WindowClosed();
    error WindowOpen();
    error GamesOpen();
    error SameClaim();
    error WrongStage();
    error NotChallenger();
    error Stale();
    error BadMove(string why);
    error DefenderRight();
    error TooEarly();
    error NotCourt();

    constructor(
        ModelRegistry models_,
        NodeRegistry nodes_,
        OneStep oneStep_,
        uint64 responseBlocks_,
        uint64 challengeBlocks_,
        uint64 moveBlocks_,
        uint256 commitBond_,
        uint256 challengeBond_,
        uint256 slashAmount_,
        address wirer_
    ) {
        wirer = wirer_;
        models = models_;
        nodes = nodes_;
        oneStep = oneStep_;
        responseBlocks = responseBlocks_;
        challengeBlocks = challengeBlocks_;
        moveBlocks = moveBlocks_;
        commitBond = commitBond_;
        challengeBond = challengeBond_;
        slashAmount = slashAmount_;
    }

    // ------------------------------------------------------------------ requests and claims

    /// @notice Ask for an optimistic inference of `modelId` on the input with canonical hash `inputHash`
    ///         (required: the dispute game proves the trace's inputs against it), fetchable at `inputUri`.
    function request(bytes32 modelId, bytes32 inputHash, string calldata inputUri)
        external
        payable
        returns (uint256 id)
    {
        return requestWithCollateral(modelId, inputHash, inputUri, 0);
    }

    /// @notice `request`, drawing only a node whose stake at the request's block covered `collateral`; its
    ///         commitment locks that much of its stake (a node that loses a game loses its whole stake).
    function requestWithCollateral(bytes32 modelId, bytes32 inputHash, string calldata inputUri, uint256 collateral)
        public
        payable
        returns (uint256 id)
    {
        if (!models.exists(modelId)) revert UnknownModel();
        if (inputHash == bytes32(0)) revert NeedInputHash();
        uint256 price = models.priceOf(modelId);
        if (msg.value < price) revert FeeTooLow(price);
        id = ++requestCount;
        Request storage r = requests[id];
        r.client = msg.sender;
        r.status = Status.Pending;
        r.seedBlock = uint64(block.number + 1);
        r.deadline = uint64(block.number) + responseBlocks;
        r.modelId = modelId;
        r.inputHash = inputHash;
        r.fee = msg.value;
        r.inputUri = inputUri;
        r.collateral = collateral;
        emit Requested(id, msg.sender, modelId, inputHash, inputUri, msg.value, r.seedBlock, r.deadline);
    }

    function getRequest(uint256 id) external view returns (Request memory) {
        return requests[id];
    }

    function getGame(uint256 gameId) external view returns (Game memory) {
        return games[gameId];
    }

    function gamesOfRequest(uint256 id) external view returns (uint256[] memory) {
        return gamesOf[id];
    }

    /// @notice The seed of a request: keccak256(blockhash(seedBlock) ‖ id), known once seedBlock is mined;
    ///         stored on first use (commit, decline, `fixSeed`), so it outlives `blockhash`.
    function seedOf(uint256 id) public view returns (bytes32) {
        Request storage r = requests[id];
        if (r.status == Status.None || r.client == address(0)) revert WrongStatus();
        if (r.seed != bytes32(0)) return r.seed;
        return Assignment.seed(r.seedBlock, id);
    }

    /// @notice Store a request's seed while its block hash is still available (anyone may call it).
    function fixSeed(uint256 id) public returns (bytes32 s) {
        s = seedOf(id);
        requests[id].seed = s;
    }

    /// @notice The node that must answer: one draw of the public stake-weighted rule over the stakes of
    ///         the request's block.
    function assigned(uint256 id) public view returns (address) {
        Request storage r = requests[id];
        address[] memory a = Assignment.draw(nodes, seedOf(id), 1, r.seedBlock - 1, r.collateral);
        return a.length == 0 ? address(0) : a[0];
    }

    /// @notice The assigned node cannot serve request `id` (input unavailable or not matching, model not
    ///         hosted, collateral not free): the client is refunded at once and nobody is slashed.
    function decline(uint256 id, string calldata reason) external {
        Request storage r = requests[id];
        if (r.status != Status.Pending || block.number > r.deadline) revert WrongStatus();
        fixSeed(id);
        if (msg.sender != assigned(id)) revert NotAssigned();
        r.status = Status.Refunded;
        emit Declined(id, msg.sender, reason);
        emit Refunded(id, r.fee, address(0));
        pay(r.client, r.fee);
    }

    /// @notice The assigned node commits its answer: output hash, trace root, and the bond.
    function commit(uint256 id, bytes32 outputHash, bytes32 traceRoot) external payable {
        Request storage r = requests[id];
        if (r.status != Status.Pending || block.number > r.deadline) revert WrongStatus();
        fixSeed(id);
        if (msg.sender != assigned(id)) revert NotAssigned();
        if (msg.value != commitBond) revert WrongBond(commitBond);
        nodes.lock(msg.sender, r.collateral);
        if (outputHash == bytes32(0) || traceRoot == bytes32(0)) revert BadMove("empty claim");
        r.status = Status.Committed;
        r.windowEnd = uint64(block.number) + challengeBlocks;
        claims[id] = Claim(msg.sender, outputHash, traceRoot, msg.value);
        emit Committed(id, msg.sender, outputHash, traceRoot, r.windowEnd);
    }

    /// @notice Dispute the pending claim of request `id` with your own (output hash, trace root) and a bond.
    function challenge(uint256 id, bytes32 outputHash, bytes32 traceRoot) external payable returns (uint256 g) {
        Request storage r = requests[id];
        if (r.status != Status.Committed) revert WrongStatus();
        if (block.number > r.windowEnd) revert WindowClosed();
        return openGame(id, msg.sender, outputHash, traceRoot);
    }

    /// @notice Open a dispute over a claim a staked node signed outside this hub (a receipt), for the
    ///         ReceiptCourt, which has checked the signature and the input: a new dispute ID holds the
    ///         node's claim and the challenger's game against it starts at once. A receipt's trace root may be
    ///         zero (deferred: nodes do not hash their intermediates while serving); the defender's reveal then
    ///         commits it, pinned to the input and the signed output, and only a different output can dispute it.
    function openDispute(
        address challenger,
        bytes32 modelId,
        bytes32 inputHash,
        address node,
        bytes32 nodeOutput,
        bytes32 nodeTrace,
        bytes32 outputHash,
        bytes32 traceRoot
    ) external payable returns (uint256 id, uint256 g) {
        if (msg.sender != court || court == address(0)) revert NotCourt();
        id = ++requestCount;
        Request storage r = requests[id];
        r.status = Status.Committed;
        r.windowEnd = uint64(block.number);
        r.modelId = modelId;
        r.inputHash = inputHash;
        r.inputUri = "dispute";
        claims[id] = Claim(node, nodeOutput, nodeTrace, 0);
        g = openGame(id, challenger, outputHash, traceRoot);
    }

    /// @notice Name the ReceiptCourt; callable once, by the deploying factory, at deployment.
    function wireCourt(address court_) external {
        if (msg.sender != wirer || court != address(0)) revert NotCourt();
        court = court_;
    }

    function openGame(uint256 id, address challenger, bytes32 outputHash, bytes32 traceRoot)
        internal
        returns (uint256 g)
    {
        Request storage r = requests[id];
        if (msg.value != challengeBond) revert WrongBond(challengeBond);
        Claim storage c = claims[id];
        // a claim whose trace is deferred (a receipt signed with trace root zero) is disputed over its output
        if (outputHash == c.outputHash && (traceRoot == c.traceRoot || c.traceRoot == bytes32(0))) {
            revert SameClaim();
        }
        if (outputHash == bytes32(0) || traceRoot == bytes32(0)) revert BadMove("empty claim");
        g = ++gameCount;
        Game storage gm = games[g];
        gm.requestId = id;
        gm.challenger = challenger;
        gm.outputHash = outputHash;
        gm.traceRoot = traceRoot;
        gm.generation = r.generation;
        gm.stage = Stage.Reveal;
        gm.deadline = uint64(block.number) + moveBlocks;
        gamesOf[id].push(g);
        r.openGames++;
        emit Challenged(id, g, challenger, c.owner, outputHash, traceRoot);
    }

    /// @notice After the window, with no game open, the claim is the result: the model owner gets its
    ///         price, the claim's owner the rest of the fee and its bond back.
    function finalize(uint256 id) external {
        Request storage r = requests[id];
        if (r.status != Status.Committed) revert WrongStatus();
        if (block.number <= r.windowEnd) revert WindowOpen();
        if (r.openGames != 0) revert GamesOpen();
        r.status = Status.Finalized;
        Claim memory c = claims[id];
        if (r.client == address(0)) {
            // a receipt dispute the challenger won: its claim stood; no fee, its bond back
            emit Finalized(id, c.outputHash, c.owner);
            return pay(c.owner, c.bond);
        }
        uint256 price = models.priceOf(r.modelId);
        ModelRegistry.Model memory m = models.model(r.modelId);
        emit Finalized(id, c.outputHash, c.owner);
        pay(m.owner, price);
        pay(c.owner, r.fee - price + c.bond);
    }

    /// @notice No commitment and no decline by the deadline: refund the client its fee and slash the
    ///         assigned node `slashAmount`, which is burned (never paid to the client, who could have made
    ///         the request fail).
    function timeoutRequest(uint256 id) external {
        Request storage r = requests[id];
        if (r.status != Status.Pending || r.client == address(0)) revert WrongStatus();
        if (block.number <= r.deadline) revert TooEarly();
        r.status = Status.Refunded;
        address a;
        if (r.seed != bytes32(0) || Assignment.seedKnown(r.seedBlock)) a = assigned(id);
        uint256 taken = a == address(0) ? 0 : nodes.slash(a, slashAmount);
        burned += taken;
        emit Refunded(id, r.fee, a);
        pay(r.client, r.fee);
    }

    // ------------------------------------------------------------------ the game

    function live(uint256 g, Stage want) internal view returns (Game storage gm, Request storage r) {
        gm = games[g];
        if (gm.stage != want) revert WrongStage();
        r = requests[gm.requestId];
        if (gm.generation != r.generation || r.status != Status.Committed) revert Stale();
        if (block.number > gm.deadline) revert BadMove("deadline passed");
    }

    function next(Game storage gm, Stage s) internal {
        gm.stage = s;
        gm.deadline = uint64(block.number) + moveBlocks;
        gm.moves++;
    }

    /// @notice Defender's first move: the model header and the trace tree, with the input roots (which must
    ///         hash to the request's input hash) and the output roots (to the claimed output hash).
    function reveal(uint256 g, Reveal calldata v) external {
        (Game storage gm, Request storage r) = live(g, Stage.Reveal);
        if (Merkle.bindLength(v.itemCount, v.itemRoot) != r.modelId) revert BadMove("item root");
        if (Merkle.rootOf(keccak256(v.header), 0, v.itemCount, v.headerPath) != v.itemRoot) {
            revert BadMove("header");
        }
        (uint256 ni, uint256 nc, uint256 nn, uint256[] memory outs) = oneStep.headerInfo(v.header);
        uint256 width = ni + nn;
        pinTrace(gm.requestId, Merkle.bindLength(width, v.traceTree));
        if (v.roots.length != ni + outs.length || v.paths.length != v.roots.length) revert BadMove("roots");
        bytes32[] memory ins = new bytes32[](ni);
        for (uint256 i = 0; i < ni; i++) {
            if (Merkle.rootOf(v.roots[i], i, width, v.paths[i]) != v.traceTree) revert BadMove("input root");
            ins[i] = v.roots[i];
        }
        if (Merkle.listRoot(ins) != r.inputHash) revert BadMove("inputs");
        bytes32[] memory os = new bytes32[](outs.length);
        for (uint256 j = 0; j < outs.length; j++) {
            os[j] = v.roots[ni + j];
            if (!outputRootOk(v, ni, nc, nn, outs[j], j)) revert BadMove("output root");
        }
        if (Merkle.listRoot(os) != claims[gm.requestId].outputHash) revert BadMove("outputs");
        gm.inputs = uint64(ni);
        gm.width = uint64(width);
        gm.depth = uint8(Merkle.depth(width));
        gm.cur = v.traceTree;
        emit Revealed(g, v.traceTree, uint64(width), uint64(ni));
        next(gm, Stage.Split);
    }

    /// The revealed trace root must be the claim's; a deferred one (zero) is committed by the first reveal,
    /// whose checks pin it to the input and the claimed output, so a wrong output still has a wrong step for
    /// the bisection to find.
    function pinTrace(uint256 id, bytes32 root) internal {
        Claim storage c = claims[id];
        if (c.traceRoot == bytes32(0)) {
            c.traceRoot = root;
            emit TraceCommitted(id, root);
        } else if (root != c.traceRoot) {
            revert BadMove("trace tree");
        }
    }

    function outputRootOk(Reveal calldata v, uint256 ni, uint256 nc, uint256 nn, uint256 val, uint256 j)
        internal
        pure
        returns (bool)
    {
        uint256 k = ni + j;
        if (val < ni || val >= ni + nc) {
            uint256 leaf = val < ni ? val : val - nc;
            return Merkle.rootOf(v.roots[k], leaf, ni + nn, v.paths[k]) == v.traceTree;
        }
        bytes32 item = keccak256(abi.encodePacked(v.descriptors[j], v.roots[k]));
        return Merkle.rootOf(item, 1 + nn + (val - ni), v.itemCount, v.paths[k]) == v.itemRoot;
    }

    /// @notice Defender: the two children of the current node of the tree being bisected.
    function split(uint256 g, bytes32 left, bytes32 right) external {
        (Game storage gm,) = live(g, Stage.Split);
        if (Merkle.hashPair(left, right) != gm.cur) revert BadMove("children do not hash to the node");
        gm.left = left;
        gm.right = right;
        emit Split(g, left, right);
        next(gm, Stage.Choose);
    }

    /// @notice Challenger: the child it disputes. Reaching a leaf moves to opening the tensor (trace tree)
    ///         or revealing the word (word tree); a padding position settles the game at once.
    function choose(uint256 g, bool right) external {
        (Game storage gm,) = live(g, Stage.Choose);
        if (msg.sender != gm.challenger) revert NotChallenger();
        gm.cur = right ? gm.right : gm.left;
        gm.index = gm.index * 2 + (right ? 1 : 0);
        gm.level++;
        emit Chosen(g, right, gm.level, gm.index, gm.words);
        // nodes at this level: ⌈width / 2^(depth − level)⌉; beyond them the tree is padding (zero)
        uint256 levelWidth = (uint256(gm.width) + (uint256(1) << (gm.depth - gm.level)) - 1) >> (gm.depth - gm.level);
        if (gm.index >= levelWidth) {
            if (gm.cur == bytes32(0)) return challengerLoses(g, "disputed padding");
            return defenderLoses(g, "non-zero padding");
        }
        if (gm.level < gm.depth) return next(gm, Stage.Split);
        if (gm.words) return next(gm, Stage.Word);
        if (gm.index < gm.inputs) return challengerLoses(g, "disputed an input");
        gm.leaf = gm.index;
        next(gm, Stage.Open);
    }

    /// @notice Defender: the disputed node output's element count and word tree.
    function open(uint256 g, uint64 len, bytes32 tree) external {
        (Game storage gm,) = live(g, Stage.Open);
        if (Merkle.bindLength(len, tree) != gm.cur) revert BadMove("length and tree do not give the root");
        if (len == 0) return challengerLoses(g, "empty tensor");
        gm.len = len;
        gm.words = true;
        gm.width = (len + 7) / 8;
        gm.depth = uint8(Merkle.depth(gm.width));
        gm.level = 0;
        gm.index = 0;
        gm.cur = tree;
        emit Opened(g, gm.leaf, len, tree);
        next(gm, gm.depth == 0 ? Stage.Word : Stage.Split);
    }

    /// @notice Defender: the disputed word (8 elements).
    function revealWord(uint256 g, bytes32 word) external {
        (Game storage gm,) = live(g, Stage.Word);
        if (keccak256(abi.encodePacked(word)) != gm.cur) revert BadMove("word does not hash to the leaf");
        gm.word = word;
        emit WordRevealed(g, gm.index, word);
        next(gm, Stage.Step);
    }

    /// @notice Anyone: show that element `j` of the disputed word is not what the canonical semantics give
    ///         for the defender's own (proven) operands. Reverts if the defender's element is right.
    function step(uint256 g, uint8 j, OneStep.Step calldata s) external {
        (Game storage gm, Request storage r) = live(g, Stage.Step);
        if (j >= 8) revert BadMove("element");
        uint256 e = uint256(gm.index) * 8 + j;
        int256 claimed = int256(int32(uint32(uint256(gm.word) >> (224 - 32 * uint256(j)))));
        if (e >= gm.len) {
            if (claimed != 0) return defenderLoses(g, "non-zero word padding");
            revert DefenderRight();
        }
        if (s.nodeIndex != gm.leaf - gm.inputs || s.element != e) revert BadMove("witness for another element");
        (bool ok, int256 value, uint256 n) = oneStep.evaluate(r.modelId, claims[gm.requestId].traceRoot, s);
        if (n != gm.len) return defenderLoses(g, "tensor length");
        if (!ok) return defenderLoses(g, "no canonical result");
        if (value != claimed) return defenderLoses(g, "wrong element");
        revert DefenderRight();
    }

    /// @notice After a move's deadline, the side that had to move loses.
    function timeout(uint256 g) external {
        Game storage gm = games[g];
        Request storage r = requests[gm.requestId];
        if (gm.stage == Stage.None || gm.stage == Stage.Done) revert WrongStage();
        if (gm.generation != r.generation || r.status != Status.Committed) revert Stale();
        if (block.number <= gm.deadline) revert TooEarly();
        if (gm.stage == Stage.Choose || gm.stage == Stage.Step) challengerLoses(g, "challenger missed its move");
        else defenderLoses(g, "defender missed its move");
    }

    // ------------------------------------------------------------------ outcomes

    /// The challenger was right: the defender's bond and whole stake are slashed (half to the challenger), the
    /// challenger's claim becomes the pending result with a fresh window (its bond now backs it), and every
    /// other game against the old claim ends with its challenger's bond returned.
    function defenderLoses(uint256 g, string memory reason) internal {
        Game storage gm = games[g];
        uint256 id = gm.requestId;
        Request storage r = requests[id];
        Claim memory old = claims[id];
        gm.stage = Stage.Done;
        r.generation++;
        r.openGames = 0;
        r.windowEnd = uint64(block.number) + challengeBlocks;
        claims[id] = Claim(gm.challenger, gm.outputHash, gm.traceRoot, challengeBond);
        emit GameResolved(g, id, gm.challenger, old.owner, gm.moves, reason);
        emit ClaimReplaced(id, gm.challenger, gm.outputHash, gm.traceRoot, r.windowEnd);
        uint256 taken = nodes.slash(old.owner, type(uint256).max);
        uint256 pot = old.bond + taken;
        burned += pot - pot / 2;
        uint256[] storage list = gamesOf[id];
        for (uint256 i = 0; i < list.length; i++) {
            Game storage other = games[list[i]];
            if (list[i] != g && other.stage != Stage.Done && other.stage != Stage.None) {
                other.stage = Stage.Done;
                pay(other.challenger, challengeBond);
            }
        }
        pay(gm.challenger, pot / 2);
    }

    /// The defender was right (or the challenger gave up): the challenger's bond is slashed, half to the
    /// defender; the claim stands.
    function challengerLoses(uint256 g, string memory reason) internal {
        Game storage gm = games[g];
        Request storage r = requests[gm.requestId];
        gm.stage = Stage.Done;
        r.openGames--;
        address defender = claims[gm.requestId].owner;
        emit GameResolved(g, gm.requestId, defender, gm.challenger, gm.moves, reason);
        burned += challengeBond - challengeBond / 2;
        pay(defender, challengeBond / 2);
    }

    /// Receives slashed stake from the node registry.
    receive() external payable {
        if (msg.sender != address(nodes)) revert TransferFailed();
    }
}
