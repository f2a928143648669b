//! Data parallelism past one machine (feature `collective`): burn-collective's multi-node mode,
//! configured and started here, with no communication code of ours.
//!
//! burn-collective works on two levels. Locally, the replicas of one process (one thread per
//! device) reduce through its in-process server. With a [`NodeConfig`], the process is also one
//! *node* of a global collective: the local replicas' tensors are reduced onto one device, that one
//! tensor goes through the *global* all-reduce between the nodes (peer to peer over WebSocket:
//! every node serves a tensor data service on its [`NodeConfig::data_port`] and downloads from the
//! others), and the result is broadcast back to the local replicas. The nodes find each other
//! through a global orchestrator, which rank 0 starts ([`start_orchestrator`]): each node
//! registers there with its address, waits until all [`NodeConfig::nodes`] have, and gets the list.
//!
//! burn-collective 0.21.0 waits without any timeout: an unreachable orchestrator is retried
//! forever, and a dead peer blocks an all-reduce forever (or panics one of its background tasks,
//! which leaves the caller waiting just the same). Every collective call of a node therefore goes
//! through [`bounded`]: past [`NodeConfig::timeout`] it returns [`TrainError::CollectiveTimeout`].
//! burn's waiting thread cannot be cancelled, so a process that got that error should exit.
//!
//! The global all-reduce strategy is a binary tree ([`GLOBAL_STRATEGY`]): burn's global ring
//! refuses tensors with fewer elements along their longest axis than there are nodes
//! (`RingReduceImpossible`), and every step starts by all-reducing a one-element count.
//!
//! **Upstream bug and workaround (burn-collective 0.21.0).** The barrier that ends every global
//! all-reduce (`global/node/sync.rs`, `SyncService::sync`) clears a *copy* of its list of synced
//! peers (`self.syncing_peers.lock().unwrap().to_vec()` … `syncing_peers.clear()`), so the list
//! keeps the first operation's entries and the second global all-reduce of one registration
//! never completes (`crates/train/tests/multinode.rs` reproduces it). That list lives in the
//! `SyncService` of burn's `Node`, which burn creates when the first local peer registers and
//! drops when the last one calls `finish_collective` (`reset_collective` keeps it). So a
//! [`NodeMember`] works in *rounds*: every global all-reduce is the only operation of one
//! registration; after it every local replica finishes, waits for the node's other replicas to
//! have finished too (a [`Barrier`]: burn's local server would otherwise take an early
//! registration for the old round), and registers again — a fresh `Node`, a fresh list. Three
//! more things make the rounds safe, all from burn's orchestrator and node code:
//!
//! - Rounds take turns over [`ORCHESTRATORS`] orchestrators. burn's orchestrator numbers a node
//!   by how many nodes are registered when it arrives, so a node registering for the next round
//!   before another has finished the last one would share its number (and get a wrong node list).
//!   With round `r` on orchestrator `r % 3`, every finish of round `r` reaches it before any
//!   registration of round `r + 3`: a node registers for `r + 1` only after finishing `r`, and
//!   round `r + 1` (on another orchestrator) completes only once every node has.
//! - burn's orchestrator keeps every registration's response socket and task for good (its
//!   session map is never emptied), one per node and round. So rank 0's replica 0 restarts the
//!   orchestrator of round `r - 2` (dropping its runtime closes them) just before it registers
//!   for round `r`: every node finished `r - 2` (round `r - 1` completed), and round `r + 1`,
//!   the next to use it, cannot start before rank 0 has registered for `r`.
//! - A node's data service takes turns over [`DATA_PORTS`] ports: burn binds the new round's port
//!   as soon as the node registers, while the last round's server may still be shutting down.
//!
//! Every step therefore costs two rounds (the global target count; then all gradients and the
//! loss concatenated into one tensor), each a registration with its WebSocket connections and a
//! restart of one orchestrator on rank 0 (`docs/training.md` has the measured cost: ~50 ms a
//! round on loopback, nearly all of it burn's `finish_collective`); the move to the next round
//! runs on a thread of its own while the replica computes.
//!
//! **Lost wake-ups, closed by running burn's node on one thread.** burn's barrier checks its list
//! and only then waits on a `tokio::sync::Notify` (`notify_waiters` keeps no permit), and its data
//! service does the same while a download waits for a tensor to be exposed: a peer's sync (or
//! the exposure) that lands between the check and the wait is lost, and that all-reduce never
//! returns. It happens when another thread of the runtime handles the arrival in that window
//! (measured: 5 of 50 runs of `tests/multinode.rs`, two at once on 2 cores, had a node hung
//! there; 0 of 60 with one worker). All of a node's
//! tasks (its local server, the data service, the barrier's handler) run on burn's collective
//! runtime, built on first use with tokio's default worker count, which the environment variable
//! `TOKIO_WORKER_THREADS` sets: [`NodeGroup::new`] sets it to 1 (see [`one_collective_worker`]).
//! With one worker the handler can only run when the waiting task yields, after it waits.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::collective::{
    all_reduce, finish_collective, register, AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation,
};
use burn::tensor::backend::Backend;
use burn_communication::Address;

use crate::error::{Result, TrainError};

/// How nodes all-reduce between each other (see the module docs for why not a ring).
pub const GLOBAL_STRATEGY: AllReduceStrategy = AllReduceStrategy::Tree(2);

/// Global orchestrators rank 0 runs, on consecutive ports; registration rounds take turns.
pub const ORCHESTRATORS: u16 = 3;

/// Ports each node's data service takes turns on, consecutive.
pub const DATA_PORTS: u16 = 2;

/// What a node waits for one collective call (registration included) unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One process's place in a multi-node run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Nodes (processes, usually one per machine) in the run.
    pub nodes: usize,
    /// This node, `0..nodes`. Its replicas are peers `rank * devices ..`; rank 0 also runs the
    /// orchestrator unless [`NodeConfig::orchestrator`] says otherwise.
    pub rank: usize,
    /// Host of the global orchestrators, as the nodes reach it.
    pub coordinator_host: String,
    /// Port of the first global orchestrator; the [`ORCHESTRATORS`] of them listen on
    /// `coordinator_port..coordinator_port + ORCHESTRATORS` ([`NodeConfig::orchestrator_port`]).
    pub coordinator_port: u16,
    /// This node's host as the other nodes reach it (its tensor data service's address).
    pub host: String,
    /// First port of this node's tensor data service (burn binds it on every interface); it
    /// uses `data_port..data_port + DATA_PORTS` in turn ([`NodeConfig::data_port_of`]).
    pub data_port: u16,
    /// Replicas (devices) on this node; every node must have the same number.
    pub devices: usize,
    /// The longest any collective call may wait (registration waits for every node to start).
    pub timeout: Duration,
    /// Whether this process starts the global orchestrator (by default: rank 0).
    pub orchestrator: bool,
}

/// Splits `HOST:PORT` (`[v6]:PORT` for an IPv6 address).
///
/// # Errors
/// [`TrainError::NodeConfig`] without a port, with port 0 or with an empty host.
pub fn parse_host_port(s: &str) -> Result<(String, u16)> {
    let bad = |why: &str| TrainError::NodeConfig(format!("{s:?} is not HOST:PORT: {why}"));
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad("bad host"));
    }
    Ok((host.to_string(), port))
}

/// The address of this machine that routes to `host:port` (no packet is sent: a UDP socket is
/// only connected), the default [`NodeConfig::host`].
///
/// # Errors
/// [`TrainError::NodeConfig`] when `host` does not resolve or no route to it exists.
pub fn local_host_towards(host: &str, port: u16) -> Result<String> {
    let err = |e: std::io::Error| {
        TrainError::NodeConfig(format!(
            "cannot tell this node's address towards {host}:{port} ({e}); give it explicitly"
        ))
    };
    let target = (host, port).to_socket_addrs().map_err(err)?.next().ok_or_else(|| {
        TrainError::NodeConfig(format!("{host} does not resolve; give this node's address explicitly"))
    })?;
    if target.ip().is_loopback() {
        return Ok(target.ip().to_string());
    }
    let unspecified: SocketAddr = (if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).parse().expect("literal");
    let socket = UdpSocket::bind(unspecified).map_err(err)?;
    socket.connect(target).map_err(err)?;
    Ok(socket.local_addr().map_err(err)?.ip().to_string())
}

impl NodeConfig {
    /// Node `rank` of `nodes` with `devices` replicas, the orchestrators at `coordinator`
    /// (`HOST:PORT`: ports `PORT..PORT + ORCHESTRATORS`); this node's address is the one that
    /// routes to the coordinator, its data ports the `DATA_PORTS` after the orchestrators' and
    /// the lower ranks' (`PORT + ORCHESTRATORS + DATA_PORTS * rank ..`: distinct on one machine,
    /// the same rule on many); rank 0 starts the orchestrators; [`DEFAULT_TIMEOUT`].
    ///
    /// # Errors
    /// [`TrainError::NodeConfig`] for what [`NodeConfig::validate`] refuses or a bad `coordinator`.
    pub fn new(nodes: usize, rank: usize, coordinator: &str, devices: usize) -> Result<Self> {
        let (coordinator_host, coordinator_port) = parse_host_port(coordinator)?;
        let data_port = u16::try_from(rank)
            .ok()
            .and_then(|r| coordinator_port.checked_add(ORCHESTRATORS)?.checked_add(r.checked_mul(DATA_PORTS)?))
            .ok_or_else(|| {
                TrainError::NodeConfig(format!("no default data port above {coordinator_port} for rank {rank}"))
            })?;
        let host = local_host_towards(&coordinator_host, coordinator_port)?;
        let config = Self {
            nodes,
            rank,
            coordinator_host,
            coordinator_port,
            host,
            data_port,
            devices,
            timeout: DEFAULT_TIMEOUT,
            orchestrator: rank == 0,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the ranges.
    ///
    /// # Errors
    /// [`TrainError::NodeConfig`] for no node or device, a rank out of range, a zero timeout or
    /// port, a bad host, more peers than `u32` counts, or a data port equal to the orchestrator's on
    /// the orchestrator's host.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(TrainError::NodeConfig(why));
        if self.nodes == 0 || self.devices == 0 {
            return bad(format!("{} nodes of {} devices: both must be at least 1", self.nodes, self.devices));
        }
        if self.rank >= self.nodes {
            return bad(format!("rank {} of {} nodes: ranks are 0..{}", self.rank, self.nodes, self.nodes));
        }
        if u32::try_from(self.nodes.saturating_mul(self.devices)).is_err() {
            return bad(format!("{} x {} peers do not fit burn's u32 peer ids", self.nodes, self.devices));
        }
        if self.timeout.is_zero() {
            return bad("the collective timeout must be positive".into());
        }
        if self.coordinator_port == 0 || self.data_port == 0 {
            return bad("port 0".into());
        }
        if self.coordinator_port.checked_add(ORCHESTRATORS - 1).is_none()
            || self.data_port.checked_add(DATA_PORTS - 1).is_none()
        {
            return bad(format!(
                "ports {}..+{ORCHESTRATORS} and {}..+{DATA_PORTS} do not fit below 65536",
                self.coordinator_port, self.data_port
            ));
        }
        for host in [&self.host, &self.coordinator_host] {
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                return bad(format!("bad host {host:?}"));
            }
        }
        let data = u32::from(self.data_port)..u32::from(self.data_port) + u32::from(DATA_PORTS);
        let orchestrators =
            u32::from(self.coordinator_port)..u32::from(self.coordinator_port) + u32::from(ORCHESTRATORS);
        if self.host == self.coordinator_host && data.start < orchestrators.end && orchestrators.start < data.end {
            return bad(format!(
                "the data ports {data:?} overlap the orchestrators' {orchestrators:?} on {}",
                self.host
            ));
        }
        Ok(())
    }

    /// Peers in the whole run.
    pub fn replicas(&self) -> usize {
        self.nodes * self.devices
    }

    /// The peer id of this node's replica `local` (`0..devices`).
    pub fn peer(&self, local: usize) -> PeerId {
        PeerId::from((self.rank * self.devices + local) as u32)
    }

    /// The port of the orchestrator that registration `round` goes to (they take turns).
    pub fn orchestrator_port(&self, round: u64) -> u16 {
        self.coordinator_port + (round % u64::from(ORCHESTRATORS)) as u16
    }

    /// The port this node's data service listens on in registration `round` (they take turns).
    pub fn data_port_of(&self, round: u64) -> u16 {
        self.data_port + (round % u64::from(DATA_PORTS)) as u16
    }

    /// burn-collective's configuration of this node for registration `round` (see the module
    /// docs): `devices` local peers, `nodes` nodes, the WebSocket addresses of that round's
    /// orchestrator and of this node's data service, its data port, [`GLOBAL_STRATEGY`].
    pub fn collective_config(&self, round: u64) -> CollectiveConfig {
        let data_port = self.data_port_of(round);
        CollectiveConfig::default()
            .with_num_devices(self.devices)
            .with_num_nodes(self.nodes as u32)
            .with_global_address(ws_address(&self.coordinator_host, self.orchestrator_port(round)))
            .with_node_address(ws_address(&self.host, data_port))
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(GLOBAL_STRATEGY)
    }
}

/// `ws://host:port` (burn-communication's WebSocket client only accepts the `ws://` form).
fn ws_address(host: &str, port: u16) -> Address {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    Address::from_str(&format!("ws://{host}:{port}")).expect("Address::from_str never fails")
}

/// Runs `f` (a blocking burn-collective call) and waits for it at most `limit` (`None`: without
/// a bound, on this thread).
///
/// # Errors
/// [`TrainError::CollectiveTimeout`] naming `op` past `limit` (the call goes on in its thread);
/// [`TrainError::Collective`] when it panicked; else `f`'s own result.
pub fn bounded<T: Send + 'static>(
    op: &'static str,
    limit: Option<Duration>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let Some(limit) = limit else { return f() };
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name(format!("collective {op}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| TrainError::Collective(format!("{op}: cannot start a thread: {e}")))?;
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(TrainError::CollectiveTimeout { op, seconds: limit.as_secs_f64() }),
        Err(RecvTimeoutError::Disconnected) => Err(TrainError::Collective(format!("{op} panicked"))),
    }
}

/// An orchestrator this process runs: its own runtime, so that dropping it closes everything
/// burn's orchestrator holds (see [`restart_orchestrator`]).
struct Hosted {
    port: u16,
    runtime: tokio::runtime::Runtime,
    /// Set before this process stops it, so that its end is not taken for SIGINT/SIGTERM.
    stopping: Arc<AtomicBool>,
}

/// The orchestrators this process started ([`start_orchestrator`]).
static HOSTED: Mutex<Vec<Hosted>> = Mutex::new(Vec::new());

fn hosted() -> std::sync::MutexGuard<'static, Vec<Hosted>> {
    HOSTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts burn-collective's orchestrator on `port` in a runtime of its own and waits (at most
/// `limit`) until `host:port` accepts connections. Should it stop by itself (burn's orchestrator
/// catches SIGINT and SIGTERM), the process ends with status 130.
fn launch(host: &str, port: u16, limit: Duration) -> Result<Hosted> {
    let fail = |reason: String| TrainError::Orchestrator { port, reason };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("global orchestrator")
        .enable_all()
        .build()
        .map_err(|e| fail(format!("no async runtime: {e}")))?;
    let (up, stopping) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (up_in_task, stopping_in_task) = (up.clone(), stopping.clone());
    runtime.spawn(async move {
        burn_collective::start_global_orchestrator(port).await;
        if up_in_task.load(Ordering::SeqCst) && !stopping_in_task.load(Ordering::SeqCst) {
            eprintln!("global orchestrator stopped (SIGINT or SIGTERM): exiting");
            std::process::exit(130);
        }
    });
    let addr: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| fail(format!("{host} does not resolve: {e}")))?.collect();
    let start = Instant::now();
    loop {
        if addr.iter().any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()) {
            up.store(true, Ordering::SeqCst);
            return Ok(Hosted { port, runtime, stopping });
        }
        if start.elapsed() >= limit {
            stopping.store(true, Ordering::SeqCst);
            return Err(fail(format!("not accepting connections after {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts the [`ORCHESTRATORS`] global orchestrators of `config` (its coordinator ports, on this
/// machine), each in a runtime of its own, and waits until they accept connections. Once they
/// are up, SIGINT or SIGTERM (which burn's orchestrator catches to stop) end this process with
/// status 130.
///
/// # Errors
/// [`TrainError::Orchestrator`] when a port is taken or not on this machine, or an orchestrator
/// does not accept connections within `config.timeout`.
pub fn start_orchestrator(config: &NodeConfig) -> Result<()> {
    let host = config.coordinator_host.as_str();
    for round in 0..u64::from(ORCHESTRATORS) {
        let port = config.orchestrator_port(round);
        // burn binds every interface and only logs a failure: check the port here first.
        drop(
            TcpListener::bind((host, port)).map_err(|e| TrainError::Orchestrator {
                port,
                reason: format!("cannot listen on {host}:{port}: {e}"),
            })?,
        );
        let orchestrator = launch(host, port, config.timeout)?;
        hosted().push(orchestrator);
    }
    Ok(())
}

/// Stops the orchestrator this process runs on `port` and starts a fresh one there (nothing when
/// it runs none): burn's orchestrator keeps every registration's response socket and task for
/// good, dropping its runtime closes them. Only call it while no node can talk to it (see the
/// module docs). Returns whether it restarted one.
///
/// # Errors
/// [`TrainError::Orchestrator`] when the fresh one does not accept connections within `limit`.
fn restart_orchestrator(host: &str, port: u16, limit: Duration) -> Result<bool> {
    let old = {
        let mut hosted = hosted();
        match hosted.iter().position(|h| h.port == port) {
            Some(i) => hosted.swap_remove(i),
            None => return Ok(false),
        }
    };
    old.stopping.store(true, Ordering::SeqCst);
    old.runtime.shutdown_timeout(Duration::from_secs(1));
    let fresh = launch(host, port, limit)?;
    hosted().push(fresh);
    Ok(true)
}

/// Sets `TOKIO_WORKER_THREADS=1` (once per process) for burn-collective's runtime, so that its
/// node's tasks run one at a time and the lost wake-ups of its barrier and data service cannot
/// happen (see the module docs). It takes effect when burn builds that runtime, at the
/// process's first `register`: call it before. It also applies to any other tokio runtime this
/// process builds later without a worker count of its own (the orchestrators here set theirs).
pub fn one_collective_worker() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // The variable is set before the process's first collective call, from the thread that will
    // make it; burn reads it when it builds its runtime, in that call.
    ONCE.call_once(|| std::env::set_var("TOKIO_WORKER_THREADS", "1"));
}

/// The replicas of one node in a multi-node run: its [`NodeConfig`] and what its local replicas
/// share (a barrier between burn's `finish_collective` and `register`; see the module docs).
/// Clone it for every replica thread.
#[derive(Clone)]
pub struct NodeGroup(Arc<GroupShared>);

struct GroupShared {
    node: NodeConfig,
    barrier: Barrier,
}

impl NodeGroup {
    /// The group of `node`'s `devices` replicas.
    ///
    /// # Errors
    /// [`TrainError::NodeConfig`] for what [`NodeConfig::validate`] refuses.
    pub fn new(node: NodeConfig) -> Result<Self> {
        node.validate()?;
        one_collective_worker();
        let barrier = Barrier::new(node.devices);
        Ok(Self(Arc::new(GroupShared { node, barrier })))
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.0.node
    }
}

impl std::fmt::Debug for NodeGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeGroup").field(&self.0.node).finish()
    }
}

fn collective_err(e: burn::collective::CollectiveError) -> TrainError {
    TrainError::Collective(format!("{e:?}"))
}

/// One local replica's membership in its node's global collective, in rounds: every global
/// all-reduce ([`NodeMember::all_reduce`]) is the only collective operation of one registration
/// with burn-collective, after which the replica finishes and registers again for the next
/// round (see the module docs for why, and why in this order). That move to the next round runs
/// on a thread of its own while the caller goes on (computing the next gradients); the next
/// all-reduce, or [`NodeMember::leave`], waits for it first. Every call is [`bounded`].
pub struct NodeMember {
    seat: Arc<Seat>,
    /// The move to the next round, when one is under way.
    advancing: Mutex<Option<JoinHandle<Result<()>>>>,
}

/// Which replica of which node, and the registration round it is in.
struct Seat {
    group: NodeGroup,
    local: usize,
    round: AtomicU64,
}

impl Seat {
    fn peer(&self) -> PeerId {
        self.group.config().peer(self.local)
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.group.config().timeout)
    }

    fn register<B: Backend>(&self, device: &B::Device) -> Result<()> {
        let (peer, device) = (self.peer(), device.clone());
        let config = self.group.config().collective_config(self.round.load(Ordering::SeqCst));
        bounded("register", self.timeout(), move || register::<B>(peer, device, config).map_err(collective_err))
    }

    fn finish<B: Backend>(&self) -> Result<()> {
        let peer = self.peer();
        bounded("finish", self.timeout(), move || finish_collective::<B>(peer).map_err(collective_err))
    }

    /// Finish this round, wait for the node's other replicas to have finished it too, and
    /// register for the next.
    fn advance<B: Backend>(&self, device: &B::Device) -> Result<()> {
        self.finish::<B>()?;
        if self.group.config().devices > 1 {
            // burn's local server takes a registration for the next round as one for this round
            // until every local replica has finished this one.
            let group = self.group.clone();
            bounded("finish (local barrier)", self.timeout(), move || {
                group.0.barrier.wait();
                Ok(())
            })?;
        }
        let round = self.round.fetch_add(1, Ordering::SeqCst) + 1;
        let node = self.group.config();
        if self.local == 0 && round >= 2 {
            // The orchestrator of round - 2 (the next one to be used, by round + 1): no node talks
            // to it any more, and none will before this node registers for this round.
            restart_orchestrator(&node.coordinator_host, node.orchestrator_port(round + 1), node.timeout)?;
        }
        self.register::<B>(device)
    }
}

impl std::fmt::Debug for NodeMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMember").field("peer", &self.peer()).field("round", &self.round()).finish()
    }
}

impl NodeMember {
    /// Registers local replica `local` (on `device`) of `group` for round 0; returns once every
    /// node has. Every local replica calls it, each on its own thread.
    ///
    /// # Errors
    /// [`TrainError::NodeConfig`] for a replica out of range; [`TrainError::CollectiveTimeout`]
    /// when not every node joined within the timeout; [`TrainError::Collective`] when burn refuses.
    pub fn join<B: Backend>(group: &NodeGroup, local: usize, device: &B::Device) -> Result<Self> {
        let devices = group.config().devices;
        if local >= devices {
            return Err(TrainError::NodeConfig(format!("replica {local} of a node of {devices} devices")));
        }
        let seat = Arc::new(Seat { group: group.clone(), local, round: AtomicU64::new(0) });
        seat.register::<B>(device)?;
        Ok(Self { seat, advancing: Mutex::new(None) })
    }

    /// This replica's peer id.
    pub fn peer(&self) -> PeerId {
        self.seat.peer()
    }

    /// The registration round this replica is in: one per global all-reduce done (read while a
    /// move to the next round is under way, it may not count the last one yet).
    pub fn round(&self) -> u64 {
        self.seat.round.load(Ordering::SeqCst)
    }

    /// Waits for the move to the next round, if one is under way.
    fn settle(&self) -> Result<()> {
        let handle = self.advancing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match handle {
            Some(h) => h.join().map_err(|_| TrainError::Collective("moving to the next round panicked".into()))?,
            None => Ok(()),
        }
    }

    /// Sums `tensor` over every replica of every node (burn's all-reduce: locally, then between
    /// the nodes), then starts moving this replica to the next round (see [`NodeMember`]).
    ///
    /// # Errors
    /// [`TrainError::CollectiveTimeout`] past the node's timeout; [`TrainError::Collective`] when
    /// burn refuses; the errors of the last move to a new round ([`TrainError::Orchestrator`]
    /// when rank 0's replica 0 could not restart an orchestrator).
    pub fn all_reduce<B: Backend>(
        &self,
        device: &B::Device,
        tensor: B::FloatTensorPrimitive,
    ) -> Result<B::FloatTensorPrimitive> {
        self.settle()?;
        let peer = self.peer();
        let sum = bounded("all-reduce", self.seat.timeout(), move || {
            all_reduce::<B>(peer, tensor, ReduceOperation::Sum).map_err(collective_err)
        })?;
        let (seat, device) = (self.seat.clone(), device.clone());
        let handle = std::thread::Builder::new()
            .name("collective round".into())
            .spawn(move || seat.advance::<B>(&device))
            .map_err(|e| TrainError::Collective(format!("cannot start a thread: {e}")))?;
        *self.advancing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        Ok(sum)
    }

    /// Leaves the collective (after the last all-reduce).
    ///
    /// # Errors
    /// As [`NodeMember::all_reduce`]'s move to a new round, and the finish.
    pub fn leave<B: Backend>(&self) -> Result<()> {
        self.settle()?;
        self.seat.finish::<B>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(rank: usize) -> NodeConfig {
        NodeConfig::new(2, rank, "127.0.0.1:29500", 1).unwrap()
    }

    #[test]
    fn defaults_from_the_coordinator() {
        let n = node(1);
        assert_eq!((n.coordinator_host.as_str(), n.coordinator_port, n.data_port), ("127.0.0.1", 29500, 29505));
        assert_eq!(node(0).data_port, 29503);
        assert_eq!(n.host, "127.0.0.1");
        assert!(!n.orchestrator && node(0).orchestrator);
        assert_eq!((n.replicas(), n.peer(0)), (2, PeerId::from(1u32)));
        // Rounds take turns: orchestrators 29500, 29501, 29502; data ports 29505, 29506.
        for (round, orchestrator, data) in [(0, 29500, 29505), (1, 29501, 29506), (2, 29502, 29505), (3, 29500, 29506)]
        {
            let c = n.collective_config(round);
            assert!(c.is_valid());
            let text = c.to_string();
            let (o, d) = (format!("ws://127.0.0.1:{orchestrator}"), format!("ws://127.0.0.1:{data}"));
            assert!(text.contains(&o) && text.contains(&d), "round {round}: {text}");
        }
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        for s in ["127.0.0.1", "127.0.0.1:0", ":29500", "127.0.0.1:99999", "a b:1", "127.0.0.1:x"] {
            assert!(matches!(parse_host_port(s), Err(TrainError::NodeConfig(_))), "{s}");
        }
        assert_eq!(parse_host_port("[::1]:80").unwrap(), ("::1".to_string(), 80));
        assert!(matches!(NodeConfig::new(2, 2, "127.0.0.1:29500", 1), Err(TrainError::NodeConfig(_))));
        assert!(matches!(NodeConfig::new(0, 0, "127.0.0.1:29500", 1), Err(TrainError::NodeConfig(_))));
        assert!(matches!(NodeConfig::new(2, 0, "127.0.0.1:29500", 0), Err(TrainError::NodeConfig(_))));
        assert!(matches!(NodeConfig::new(2, 1, "127.0.0.1:65535", 1), Err(TrainError::NodeConfig(_))));
        let n = node(0);
        let cases = [
            NodeConfig { timeout: Duration::ZERO, ..n.clone() },
            NodeConfig { data_port: n.coordinator_port, ..n.clone() },
            NodeConfig { data_port: n.coordinator_port + ORCHESTRATORS - 1, ..n.clone() },
            NodeConfig { data_port: n.coordinator_port - 1, ..n.clone() },
            NodeConfig { data_port: u16::MAX, ..n.clone() },
            NodeConfig { coordinator_port: u16::MAX - 1, ..n.clone() },
            NodeConfig { host: "".into(), ..n.clone() },
            NodeConfig { nodes: usize::MAX, rank: 0, ..n.clone() },
        ];
        for bad in cases {
            assert!(matches!(bad.validate(), Err(TrainError::NodeConfig(_))), "{bad:?}");
        }
    }

    #[test]
    fn bounded_returns_in_time_or_a_timeout() {
        assert_eq!(bounded("fast", Some(Duration::from_secs(5)), || Ok(3)).unwrap(), 3);
        let start = Instant::now();
        let slow = bounded("slow", Some(Duration::from_millis(100)), || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        });
        assert!(matches!(slow, Err(TrainError::CollectiveTimeout { op: "slow", .. })), "{slow:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        let panicked = bounded::<()>("boom", Some(Duration::from_secs(5)), || panic!("boom"));
        assert!(matches!(panicked, Err(TrainError::Collective(_))));
    }
}
