//! Data parallelism past one process through burn-collective's global mode (feature
//! `collective`), on loopback only (127.0.0.1): every node is a child process — this test binary
//! run again as the ignored test `node_process`, its role and place in `QWEN_NODE_*` environment
//! variables — with free ports picked per test, every wait bounded, and the children killed
//! whatever happens.
//!
//! - `raw_burn_collective_0_21_hangs_at_the_second_global_all_reduce_hence_the_rounds`: the
//!   minimal reproduction of burn-collective 0.21.0's bug (see `qwen_train::multinode`), the
//!   reason for the workaround: two nodes register once, as burn's API intends, and all-reduce
//!   one 4-element tensor each; the first global all-reduce returns the right sum, the second
//!   never completes — here it ends in `CollectiveTimeout` after the bound, on both nodes.
//! - `rounds_of_one_registration_per_global_all_reduce_complete_many_all_reduces`: the workaround
//!   (`NodeMember`: finish and register again after every global all-reduce, the orchestrators
//!   and data ports taking turns) completes 12 global all-reduces in a row, every sum right.
//! - `a_dead_node_stops_the_other_with_an_error_within_the_timeout`: node 1 joins and is killed
//!   (SIGKILL); node 0, in its first step, stops with a typed error within its timeout.
//! - `a_node_without_orchestrator_stops_at_the_timeout`: burn retries an unreachable orchestrator
//!   forever; the node stops with `CollectiveTimeout` at its bound.
//! - `two_processes_train_like_one_process_with_two_replicas`: two nodes of one replica each
//!   train 3 steps from one checkpoint and end with the losses and parameters (within 1e-5) of
//!   one process with two replicas.
#![cfg(feature = "collective")]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::collective::{all_reduce, register, PeerId, ReduceOperation};
use burn::tensor::{Tensor, TensorPrimitive};
use qwen_model::QwenModel;
use qwen_train::multinode::{
    bounded, one_collective_worker, start_orchestrator, NodeConfig, NodeGroup, NodeMember, DATA_PORTS, ORCHESTRATORS,
};
use qwen_train::{Schedule, TrainConfig, TrainError, Trainer};
use serde_json::{json, Value};

mod common;
use common::{config, micro, params};

type B = Autodiff<Flex>;

const STEPS: u32 = 3;

/// Consecutive global all-reduces of the rounds test.
const ROUNDS: u32 = 12;

/// The ports of one collective, laid out as [`NodeConfig::new`] does: the orchestrators' from
/// `coordinator`, then each node's data ports.
struct Ports {
    coordinator: u16,
    data: Vec<u16>,
}

impl Ports {
    /// A block of free consecutive loopback ports below the kernel's ephemeral range (the
    /// listeners are dropped: another process could take one in between, which the bounded waits
    /// turn into a failure, not a hang).
    ///
    /// Why below: every round opens and closes connections (to the orchestrator, to the peer's
    /// data service, for the barrier), and each outgoing connection's local port is drawn from the
    /// ephemeral range (`ip_local_port_range`). A node's data port there can be taken by such a
    /// connection while the node is between two rounds; its next bind then fails (burn only logs
    /// it) and the peer's download from it panics inside burn. Blocks come from a counter shared
    /// by this process's tests, starting at an offset from the process id.
    fn new(nodes: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        const FIRST: u32 = 10_000;
        let len = u32::from(ORCHESTRATORS + DATA_PORTS * nodes as u16);
        let end = ephemeral_start().max(FIRST + 100 * len);
        let span = end - FIRST - len;
        let offset = std::process::id() * 7 * len;
        for _ in 0..1000 {
            let base = FIRST + (offset + NEXT.fetch_add(len, Ordering::SeqCst)) % span;
            let taken: Vec<_> = (base..base + len).map(|p| TcpListener::bind(("127.0.0.1", p as u16))).collect();
            if taken.iter().all(Result::is_ok) {
                let base = base as u16;
                let data = (0..nodes as u16).map(|r| base + ORCHESTRATORS + DATA_PORTS * r).collect();
                return Self { coordinator: base, data };
            }
        }
        panic!("no {len} consecutive free ports on 127.0.0.1 below {end}");
    }
}

/// The first port of the kernel's ephemeral range (Linux: 32768 unless configured).
fn ephemeral_start() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The child processes of a test, killed and reaped when it ends, passing or not.
struct Nodes {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Nodes {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qwen-multinode-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self { dir, children: Vec::new() }
    }

    /// Starts node `rank` of `nodes` with `role`, waiting at most `timeout_s` per collective call.
    fn spawn(&mut self, role: &str, rank: usize, ports: &Ports, timeout_s: f64, extra: &[(&str, &str)]) {
        let log = fs::File::create(self.dir.join(format!("node{rank}.log"))).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "node_process", "--ignored", "--nocapture", "--test-threads=1"])
            .env("QWEN_NODE_ROLE", role)
            .env("QWEN_NODE_RANK", rank.to_string())
            .env("QWEN_NODE_NODES", ports.data.len().to_string())
            .env("QWEN_NODE_COORDINATOR_PORT", ports.coordinator.to_string())
            .env("QWEN_NODE_DATA_PORT", ports.data[rank].to_string())
            .env("QWEN_NODE_TIMEOUT", timeout_s.to_string())
            .env("QWEN_NODE_OUT", self.result_path(rank))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if self.children.len() <= rank {
            self.children.resize_with(rank + 1, || None);
        }
        self.children[rank] = Some(cmd.spawn().unwrap());
    }

    fn result_path(&self, rank: usize) -> PathBuf {
        self.dir.join(format!("node{rank}.json"))
    }

    fn logs(&self) -> String {
        (0..self.children.len())
            .map(|r| {
                let log = fs::read_to_string(self.dir.join(format!("node{r}.log"))).unwrap_or_default();
                let lines: Vec<_> = log.lines().collect();
                // Every panic's message (a backtrace after each would push the first out of
                // the tail), then the last lines.
                let panics: Vec<_> = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.contains(" panicked at "))
                    .flat_map(|(i, _)| lines[i..(i + 2).min(lines.len())].iter().copied())
                    .collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                format!(
                    "--- node {r} (panics) ---\n{}\n--- node {r} (last lines) ---\n{}",
                    panics.join("\n"),
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for node `rank` to exit, at most `limit`; its result file.
    fn wait(&mut self, rank: usize, limit: Duration) -> Value {
        let start = Instant::now();
        let child = self.children[rank].as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let text = fs::read_to_string(self.result_path(rank)).unwrap_or_default();
                return serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("node {rank} exited ({status}) without a result\n{}", self.logs()));
            }
            if start.elapsed() > limit {
                panic!("node {rank} still runs after {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, rank: usize) {
        if let Some(mut child) = self.children[rank].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for rank in 0..self.children.len() {
            self.kill(rank);
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"))
}

/// The child's [`NodeConfig`], from the environment (loopback only).
fn node_from_env() -> NodeConfig {
    let rank: usize = env("QWEN_NODE_RANK").parse().unwrap();
    let node = NodeConfig {
        nodes: env("QWEN_NODE_NODES").parse().unwrap(),
        rank,
        coordinator_host: "127.0.0.1".into(),
        coordinator_port: env("QWEN_NODE_COORDINATOR_PORT").parse().unwrap(),
        host: "127.0.0.1".into(),
        data_port: env("QWEN_NODE_DATA_PORT").parse().unwrap(),
        devices: 1,
        timeout: Duration::from_secs_f64(env("QWEN_NODE_TIMEOUT").parse().unwrap()),
        orchestrator: rank == 0 && std::env::var("QWEN_NODE_NO_ORCHESTRATOR").is_err(),
    };
    node.validate().unwrap();
    node
}

fn error_json(e: &TrainError, seconds: f64) -> Value {
    json!({
        "error": e.to_string(),
        "timeout": matches!(e, TrainError::CollectiveTimeout { .. }),
        "seconds": seconds,
    })
}

/// The node roles, run in child processes only.
#[test]
#[ignore = "a node of the multi-node tests: run by them in a child process"]
fn node_process() {
    let node = node_from_env();
    let out = PathBuf::from(env("QWEN_NODE_OUT"));
    let start = Instant::now();
    let result = match env("QWEN_NODE_ROLE").as_str() {
        "reduce" => reduce_role(&node, start),
        "rounds" => rounds_role(&node, start),
        "train" => train_role(&node, &PathBuf::from(env("QWEN_NODE_INIT")), start),
        "join-then-wait" => {
            let init = PathBuf::from(env("QWEN_NODE_INIT"));
            let (trainer, _) = Trainer::<B>::resume(&init, &Default::default()).unwrap();
            trainer.join_node(0, &NodeGroup::new(node).unwrap()).unwrap();
            fs::write(out.with_extension("joined"), "").unwrap();
            std::thread::sleep(Duration::from_secs(600));
            json!({})
        }
        role => panic!("unknown role {role}"),
    };
    fs::write(&out, serde_json::to_vec(&result).unwrap()).unwrap();
    // burn's threads may still wait on a dead peer: leave without them.
    std::process::exit(0);
}

/// The minimal reproduction: register, then all-reduce `[rank + 1; 4] * op` three times, each
/// call bounded; stops at the first error.
fn reduce_role(node: &NodeConfig, start: Instant) -> Value {
    if node.orchestrator {
        start_orchestrator(node).unwrap();
    }
    // burn's runtime on one thread, as `NodeGroup::new` sets it: without, its barrier's lost
    // wake-up can hang the first all-reduce too (the bug shown here is the second's, every time).
    one_collective_worker();
    let device = Default::default();
    // One registration for all three, as burn-collective's API intends (not the rounds).
    let (peer, config) = (node.peer(0), node.collective_config(0));
    // Joining waits for the other process to start: a generous bound, not the one under test.
    bounded("register", Some(Duration::from_secs(60)), move || {
        register::<Flex>(peer, device, config).map_err(|e| TrainError::Collective(format!("{e:?}")))
    })
    .unwrap();
    let joined = start.elapsed().as_secs_f64();
    let mut ops = Vec::new();
    for op in 1..=3u32 {
        let t = Tensor::<Flex, 1>::from_floats([(node.rank as f32 + 1.0) * op as f32; 4], &Default::default());
        let prim = t.into_primitive().tensor();
        let began = Instant::now();
        let r = bounded("all-reduce", Some(node.timeout), move || {
            all_reduce::<Flex>(peer, prim, ReduceOperation::Sum).map_err(|e| TrainError::Collective(format!("{e:?}")))
        });
        let seconds = began.elapsed().as_secs_f64();
        match r {
            Ok(sum) => {
                let values =
                    Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(sum)).into_data().to_vec::<f32>().unwrap();
                ops.push(json!({"op": op, "values": values, "seconds": seconds}));
            }
            Err(e) => {
                ops.push(json!({"op": op, "failed": error_json(&e, seconds)}));
                break;
            }
        }
    }
    json!({"joined_after": joined, "ops": ops})
}

/// The workaround: [`NodeMember`]'s rounds (one registration per global all-reduce), [`ROUNDS`]
/// all-reduces of `[(rank + 1) * op; 4]`; stops at the first error.
fn rounds_role(node: &NodeConfig, start: Instant) -> Value {
    if node.orchestrator {
        start_orchestrator(node).unwrap();
    }
    let device = Default::default();
    let group = NodeGroup::new(node.clone()).unwrap();
    let member = NodeMember::join::<Flex>(&group, 0, &device).unwrap();
    let joined = start.elapsed().as_secs_f64();
    let mut ops = Vec::new();
    let mut fds = Vec::new();
    for op in 1..=ROUNDS {
        if op == 4 || op == ROUNDS {
            fds.push(open_files());
        }
        let t = Tensor::<Flex, 1>::from_floats([(node.rank as f32 + 1.0) * op as f32; 4], &device);
        let began = Instant::now();
        // Without work in between, each all-reduce first waits for the move to its round.
        match member.all_reduce::<Flex>(&device, t.into_primitive().tensor()) {
            Ok(sum) => {
                let values =
                    Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(sum)).into_data().to_vec::<f32>().unwrap();
                ops.push(json!({"op": op, "values": values, "seconds": began.elapsed().as_secs_f64()}));
            }
            Err(e) => {
                ops.push(json!({"op": op, "failed": error_json(&e, began.elapsed().as_secs_f64())}));
                break;
            }
        }
    }
    let left = member.leave::<Flex>().map_err(|e| e.to_string());
    json!({"joined_after": joined, "ops": ops, "left": left.is_ok(), "rounds": member.round(), "open_files": fds})
}

/// This process's open file descriptors (Linux; `None` elsewhere).
fn open_files() -> Option<usize> {
    fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Resumes the trainer from `init`, joins, trains [`STEPS`] steps on `micro(step, rank)`.
fn train_role(node: &NodeConfig, init: &Path, start: Instant) -> Value {
    if node.orchestrator {
        start_orchestrator(node).unwrap();
    }
    let (mut trainer, _) = Trainer::<B>::resume(init, &Default::default()).unwrap();
    let run = |trainer: &mut Trainer<B>| -> Result<Vec<f32>, TrainError> {
        let peer = trainer.join_node(0, &NodeGroup::new(node.clone())?)?;
        let losses = (0..STEPS)
            .map(|s| trainer.train_step_collective(&[micro(s, node.rank as u32)], peer.clone()).map(|st| st.loss))
            .collect::<Result<Vec<f32>, _>>()?;
        trainer.leave_collective(peer)?;
        Ok(losses)
    };
    match run(&mut trainer) {
        Ok(losses) => json!({"losses": losses, "params": params(&trainer)}),
        Err(e) => error_json(&e, start.elapsed().as_secs_f64()),
    }
}

/// A fresh tiny model saved as a checkpoint: what every node starts from (the same weights and
/// parameter ids in every process).
fn initial_checkpoint(dir: &Path) -> PathBuf {
    let init = dir.join("init");
    let model = QwenModel::<B>::random(config(), 0.05, &Default::default());
    Trainer::new(model, TrainConfig::new(Schedule::new(5e-3, 1, 4), 3)).unwrap().save_checkpoint(&init, None).unwrap();
    init
}

/// Why [`NodeMember`] works in rounds: burn-collective 0.21.0 used as its API intends (one
/// registration, then all-reduces) completes one global all-reduce, and the second never returns.
#[test]
fn raw_burn_collective_0_21_hangs_at_the_second_global_all_reduce_hence_the_rounds() {
    let mut nodes = Nodes::new("repro");
    let ports = Ports::new(2);
    let timeout = 4.0;
    for rank in 0..2 {
        nodes.spawn("reduce", rank, &ports, timeout, &[]);
    }
    for rank in 0..2 {
        let r = nodes.wait(rank, Duration::from_secs(90));
        let ops = r["ops"].as_array().unwrap();
        eprintln!("node {rank}: {r}");
        // The first global all-reduce is right: 1 + 2 on every element.
        assert_eq!(ops[0]["values"], json!([3.0, 3.0, 3.0, 3.0]), "node {rank}: {r}\n{}", nodes.logs());
        // The second never completes (burn-collective 0.21.0's global barrier); bounded here.
        // When this fails because it completed, burn-collective's barrier is fixed: the rounds of
        // `NodeMember` (one registration per global all-reduce) are no longer needed.
        assert_eq!(ops.len(), 2, "node {rank}: {r}");
        let failed = &ops[1]["failed"];
        assert_eq!(failed["timeout"], json!(true), "node {rank}: {r}");
        let waited = failed["seconds"].as_f64().unwrap();
        assert!((timeout..timeout + 2.0).contains(&waited), "node {rank} waited {waited} s for a {timeout} s bound");
    }
}

/// The workaround: one registration round per global all-reduce completes [`ROUNDS`] of them in a
/// row, every sum right, through all three orchestrators and both data ports several times.
#[test]
fn rounds_of_one_registration_per_global_all_reduce_complete_many_all_reduces() {
    let mut nodes = Nodes::new("rounds");
    let ports = Ports::new(2);
    for rank in 0..2 {
        nodes.spawn("rounds", rank, &ports, 20.0, &[]);
    }
    for rank in 0..2 {
        let r = nodes.wait(rank, Duration::from_secs(120));
        let ops = r["ops"].as_array().unwrap();
        assert_eq!(ops.len(), ROUNDS as usize, "node {rank}: {r}\n{}", nodes.logs());
        let mut seconds = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let k = (i + 1) as f32;
            // (1 + 2) * op on every element.
            assert_eq!(op["values"], json!([3.0 * k, 3.0 * k, 3.0 * k, 3.0 * k]), "node {rank}: {r}");
            seconds.push(op["seconds"].as_f64().unwrap());
        }
        // Each all-reduce in a registration round of its own.
        assert_eq!((&r["left"], &r["rounds"]), (&json!(true), &json!(ROUNDS)), "node {rank}: {r}");
        // No per-round leak (burn's orchestrator keeps a socket per registration: rank 0 restarts
        // them): as many files open before round 3 as before the last.
        if let [Some(before), Some(after)] =
            serde_json::from_value::<[Option<usize>; 2]>(r["open_files"].clone()).unwrap()
        {
            eprintln!("node {rank}: {before} files open before round 3, {after} before round {ROUNDS}");
            assert!(
                after <= before + 2,
                "node {rank}: {before} files open before round 3, {after} before round {ROUNDS}"
            );
        }
        seconds.sort_by(f64::total_cmp);
        eprintln!(
            "node {rank}: {ROUNDS} global all-reduces with a registration round each: median {:.1} ms, max {:.1} ms",
            seconds[seconds.len() / 2] * 1e3,
            seconds[seconds.len() - 1] * 1e3
        );
    }
}

#[test]
fn a_dead_node_stops_the_other_with_an_error_within_the_timeout() {
    let mut nodes = Nodes::new("dead");
    let init = initial_checkpoint(&nodes.dir);
    let init = init.to_str().unwrap();
    let ports = Ports::new(2);
    // Also the bound of joining, which waits for the other process to start: generous on a busy
    // machine; node 0 is expected to stop long before it.
    let timeout = 20.0;
    nodes.spawn("train", 0, &ports, timeout, &[("QWEN_NODE_INIT", init)]);
    nodes.spawn("join-then-wait", 1, &ports, timeout, &[("QWEN_NODE_INIT", init)]);
    let joined = nodes.result_path(1).with_extension("joined");
    let start = Instant::now();
    while !joined.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "node 1 did not join\n{}", nodes.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes.kill(1);
    let killed = Instant::now();
    let r = nodes.wait(0, Duration::from_secs_f64(timeout + 30.0));
    let after = killed.elapsed().as_secs_f64();
    eprintln!("node 0, {after:.2} s after node 1 was killed: {r}");
    let error = r["error"].as_str().unwrap_or_else(|| panic!("node 0 did not fail: {r}"));
    assert!(error.starts_with("collective"), "{error}");
    assert!(after <= timeout + 5.0, "node 0 stopped {after} s after the kill, bound {timeout} s");
}

#[test]
fn a_node_without_orchestrator_stops_at_the_timeout() {
    let mut nodes = Nodes::new("alone");
    let init = initial_checkpoint(&nodes.dir);
    let ports = Ports::new(2);
    let timeout = 3.0;
    nodes.spawn("train", 1, &ports, timeout, &[("QWEN_NODE_INIT", init.to_str().unwrap())]);
    let r = nodes.wait(1, Duration::from_secs_f64(timeout + 60.0));
    assert_eq!(r["timeout"], json!(true), "{r}");
    assert!(r["error"].as_str().unwrap().contains("register"), "{r}");
}

#[test]
fn two_processes_train_like_one_process_with_two_replicas() {
    let mut nodes = Nodes::new("parity");
    let init = initial_checkpoint(&nodes.dir);

    // One process, two replicas on two threads (burn-collective's local mode).
    let local: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u32)
            .map(|peer| {
                let init = &init;
                scope.spawn(move || {
                    let (mut t, _) = Trainer::<B>::resume(init, &Default::default()).unwrap();
                    let id = PeerId::from(peer);
                    t.join_collective(id, 2).unwrap();
                    let losses =
                        (0..STEPS).map(|s| t.train_step_collective(&[micro(s, peer)], id).unwrap().loss).collect();
                    t.leave_collective(id).unwrap();
                    (losses, params(&t))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Two processes of one replica each.
    let ports = Ports::new(2);
    for rank in 0..2 {
        nodes.spawn("train", rank, &ports, 60.0, &[("QWEN_NODE_INIT", init.to_str().unwrap())]);
    }
    for rank in 0..2 {
        let r = nodes.wait(rank, Duration::from_secs(180));
        let losses: Vec<f32> =
            serde_json::from_value(r["losses"].clone()).unwrap_or_else(|_| panic!("node {rank}: {r}"));
        let p: Vec<f32> = serde_json::from_value(r["params"].clone()).unwrap();
        let (want_losses, want) = &local[rank];
        for (a, b) in losses.iter().zip(want_losses) {
            assert!((a - b).abs() <= 1e-5, "node {rank}: losses {losses:?} vs {want_losses:?}");
        }
        let d = p.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("node {rank}: losses {losses:?}, parameters within {d:e} of one process with two replicas");
        assert!(d <= 1e-5, "node {rank}: parameters differ by {d}");
    }
}
