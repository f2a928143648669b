//! Data parallelism past one machine (feature `collective`): burn-collective's multi-node mode,
//! configured and started here, with no communication code of ours.
//!
//! burn-collective works on two levels. Locally, the replicas of one process (one thread per
//! device) reduce through its in-process server. With a [`NodeConfig`], the process is also one
//! *node* of a global collective: the local replicas' tensors are reduced onto one device, that one
//! tensor goes through the *global* all-reduce between the nodes (peer to peer over WebSocket:
//! every node serves a tensor data service on its [`NodeConfig::data_port`] and downloads from the
//! others), and the result is broadcast back to the local replicas. The nodes find each other
//! through the global orchestrator, which rank 0 starts ([`start_orchestrator`]): each node
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
//! (`RingReduceImpossible`), and every step all-reduces two one-element counts.
//!
//! **Known upstream bug (burn-collective 0.21.0)**: the barrier that ends every global all-reduce
//! (`global/node/sync.rs`, `SyncService::sync`) clears a *copy* of its list of synced peers
//! (`self.syncing_peers.lock().unwrap().to_vec()` … `syncing_peers.clear()`), so the list keeps
//! the first operation's entries and the second global all-reduce of a process never completes.
//! Multi-node training therefore stops at its first step with [`TrainError::CollectiveTimeout`];
//! `crates/train/tests/multinode.rs` reproduces it with two processes and two all-reduces of a
//! 4-element tensor, and holds the two-process training test (ignored), which passes with the
//! two-line fix applied to a copy of burn-collective (the diff is in `docs/training.md`).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::collective::{AllReduceStrategy, CollectiveConfig, PeerId};
use burn_communication::Address;

use crate::error::{Result, TrainError};

/// How nodes all-reduce between each other (see the module docs for why not a ring).
pub const GLOBAL_STRATEGY: AllReduceStrategy = AllReduceStrategy::Tree(2);

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
    /// Host of the global orchestrator, as the nodes reach it.
    pub coordinator_host: String,
    /// Port of the global orchestrator.
    pub coordinator_port: u16,
    /// This node's host as the other nodes reach it (its tensor data service's address).
    pub host: String,
    /// Port of this node's tensor data service (burn binds it on every interface).
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
    /// Node `rank` of `nodes` with `devices` replicas, the orchestrator at `coordinator`
    /// (`HOST:PORT`); this node's address is the one that routes to the coordinator, its data port
    /// the coordinator's port + 1 + `rank` (distinct on one machine, the same rule on many); rank 0
    /// starts the orchestrator; [`DEFAULT_TIMEOUT`].
    ///
    /// # Errors
    /// [`TrainError::NodeConfig`] for what [`NodeConfig::validate`] refuses or a bad `coordinator`.
    pub fn new(nodes: usize, rank: usize, coordinator: &str, devices: usize) -> Result<Self> {
        let (coordinator_host, coordinator_port) = parse_host_port(coordinator)?;
        let data_port =
            u16::try_from(rank).ok().and_then(|r| coordinator_port.checked_add(1)?.checked_add(r)).ok_or_else(
                || TrainError::NodeConfig(format!("no default data port above {coordinator_port} for rank {rank}")),
            )?;
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
        for host in [&self.host, &self.coordinator_host] {
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                return bad(format!("bad host {host:?}"));
            }
        }
        if self.data_port == self.coordinator_port && self.host == self.coordinator_host {
            return bad(format!("the data port {} is the orchestrator's", self.data_port));
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

    /// burn-collective's configuration of this node: `devices` local peers, `nodes` nodes, the
    /// orchestrator's and this node's WebSocket addresses, the data port, [`GLOBAL_STRATEGY`].
    pub fn collective_config(&self) -> CollectiveConfig {
        CollectiveConfig::default()
            .with_num_devices(self.devices)
            .with_num_nodes(self.nodes as u32)
            .with_global_address(ws_address(&self.coordinator_host, self.coordinator_port))
            .with_node_address(ws_address(&self.host, self.data_port))
            .with_data_service_port(self.data_port)
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

/// Starts burn-collective's global orchestrator of `config` (its coordinator port, on this
/// machine) in a thread of its own and waits until it accepts connections. Once it is up, SIGINT
/// or SIGTERM (which burn's orchestrator catches to stop) end this process with status 130.
///
/// # Errors
/// [`TrainError::Orchestrator`] when the port is taken or not on this machine, or the orchestrator
/// does not accept connections within `config.timeout`.
pub fn start_orchestrator(config: &NodeConfig) -> Result<()> {
    let (host, port) = (config.coordinator_host.as_str(), config.coordinator_port);
    let fail = |reason: String| TrainError::Orchestrator { port, reason };
    // burn binds every interface and only logs a failure: check the port here first.
    drop(TcpListener::bind((host, port)).map_err(|e| fail(format!("cannot listen on {host}:{port}: {e}")))?);
    let up = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(format!("no async runtime: {e}")))?;
    let up_in_thread = up.clone();
    std::thread::Builder::new()
        .name("global orchestrator".into())
        .spawn(move || {
            runtime.block_on(burn_collective::start_global_orchestrator(port));
            if up_in_thread.load(Ordering::SeqCst) {
                eprintln!("global orchestrator stopped (SIGINT or SIGTERM): exiting");
                std::process::exit(130);
            }
        })
        .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
    let addr: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| fail(format!("{host} does not resolve: {e}")))?.collect();
    let start = Instant::now();
    while start.elapsed() < config.timeout {
        if addr.iter().any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()) {
            up.store(true, Ordering::SeqCst);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(fail(format!("not accepting connections after {:?}", config.timeout)))
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
        assert_eq!((n.coordinator_host.as_str(), n.coordinator_port, n.data_port), ("127.0.0.1", 29500, 29502));
        assert_eq!(n.host, "127.0.0.1");
        assert!(!n.orchestrator && node(0).orchestrator);
        assert_eq!((n.replicas(), n.peer(0)), (2, PeerId::from(1u32)));
        let c = n.collective_config();
        assert!(c.is_valid());
        let text = c.to_string();
        assert!(text.contains("ws://127.0.0.1:29500") && text.contains("ws://127.0.0.1:29502"), "{text}");
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
