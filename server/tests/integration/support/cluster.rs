//! A cluster of real `ringkv` processes on 127.0.0.1: fixed client and peer
//! ports per member, each member's data directory kept across restarts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

use super::proxy::{self, Links};
use super::{free_port, Ringkv, Starting, START_TIMEOUT};

/// The server's fault hook: a file holding a delay in milliseconds for every
/// WAL write (see `server/src/store/wal_io.rs`).
const DISK_DELAY_ENV: &str = "RINGKV_FAULT_DISK_DELAY_FILE";

pub struct Member {
    pub name: String,
    pub client_port: u16,
    /// The peer port other members use (a proxy's, when there are proxies).
    pub peer_port: u16,
    /// The port the member itself listens on for peers.
    pub listen_peer_port: u16,
    pub data_dir: PathBuf,
    /// None while the member is down.
    pub process: Option<Ringkv>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn listen_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listen_peer_port)
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` members together (plus `extra` flags for each) and waits
    /// until every one serves clients.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::new(size, extra, false);
        let all: Vec<usize> = (0..size).collect();
        cluster.start_members(&all);
        cluster
    }

    /// Like `start`, with a fault-injecting proxy in front of each member's
    /// peer port (see `support::proxy`); cut links through the returned `Links`.
    pub async fn start_proxied(size: usize, extra: &[&str]) -> (Cluster, Links) {
        let mut cluster = Cluster::new(size, extra, true);
        let links = Links::default();
        for member in &cluster.members {
            proxy::spawn_proxy(member.peer_port, member.listen_peer_port, links.clone()).await;
        }
        let all: Vec<usize> = (0..size).collect();
        tokio::task::block_in_place(|| cluster.start_members(&all));
        (cluster, links)
    }

    /// The members' ports and (not yet existing) data directories, none
    /// started: for data directories made another way (a snapshot restore).
    pub fn stopped(size: usize, extra: &[&str]) -> Cluster {
        Cluster::new(size, extra, false)
    }

    /// The `--initial-cluster` every member starts with.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    fn new(size: usize, extra: &[&str], proxied: bool) -> Cluster {
        assert!(size > 0);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let members: Vec<Member> = (0..size)
            .map(|index| {
                let peer_port = free_port();
                Member {
                    name: format!("m{index}"),
                    client_port: free_port(),
                    peer_port,
                    listen_peer_port: if proxied { free_port() } else { peer_port },
                    data_dir: dir.path().join(format!("m{index}")),
                    process: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            members,
            initial_cluster,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            dir,
        }
    }

    /// Starts member `index` with its usual flags; wait with [`Starting::ready`]
    /// (or [`Starting::failed`]).
    pub fn spawn(&self, index: usize) -> Starting {
        self.spawn_with(index, &self.initial_cluster, &[])
    }

    /// Starts member `index` with its usual flags and `flags` after them
    /// (flags for one start only); wait with [`Starting::ready`] (or
    /// [`Starting::failed`]), then keep it with [`Cluster::started`].
    pub fn spawn_adding(&self, index: usize, flags: &[&str]) -> Starting {
        let flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        self.spawn_with(index, &self.initial_cluster, &flags)
    }

    /// Adds a member that is not in the initial cluster (ports and a data
    /// directory, not started); returns its index. Add it to the cluster
    /// (MemberAdd), then start it with [`Cluster::spawn_joining`].
    pub fn add_slot(&mut self) -> usize {
        let index = self.members.len();
        let peer_port = free_port();
        self.members.push(Member {
            name: format!("m{index}"),
            client_port: free_port(),
            peer_port,
            listen_peer_port: peer_port,
            data_dir: self.dir.path().join(format!("m{index}")),
            process: None,
        });
        index
    }

    /// Starts member `index` joining the running cluster
    /// (`--initial-cluster-state existing`), with `--initial-cluster` listing
    /// the members at `listed` (itself included); wait with [`Starting::ready`].
    pub fn spawn_joining(&self, index: usize, listed: &[usize]) -> Starting {
        let initial_cluster = listed
            .iter()
            .map(|&listed| format!("{}={}", self.members[listed].name, self.members[listed].peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let existing = ["--initial-cluster-state".to_string(), "existing".to_string()];
        self.spawn_with(index, &initial_cluster, &existing)
    }

    /// Keeps a started member (see [`Cluster::spawn_joining`]) as member `index`.
    pub fn started(&mut self, index: usize, process: super::Ringkv) {
        assert!(
            self.members[index].process.is_none(),
            "member {index} is already running"
        );
        self.members[index].process = Some(process);
    }

    fn spawn_with(&self, index: usize, initial_cluster: &str, flags: &[String]) -> Starting {
        let member = &self.members[index];
        let mut args: Vec<String> = vec![
            "--name".into(),
            member.name.clone(),
            "--listen-client-urls".into(),
            member.endpoint(),
            "--advertise-client-urls".into(),
            member.endpoint(),
            "--listen-peer-urls".into(),
            member.listen_peer_url(),
            "--initial-advertise-peer-urls".into(),
            member.peer_url(),
            "--initial-cluster".into(),
            initial_cluster.to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        args.extend(flags.iter().cloned());
        let disk_delay = self.disk_delay_file(index);
        Ringkv::spawn_with_env(&member.data_dir, &args, &[(DISK_DELAY_ENV, &disk_delay)])
    }

    /// Where member `index`'s WAL looks for its injected disk delay.
    fn disk_delay_file(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.disk-delay-ms", self.members[index].name))
    }

    /// Makes member `index`'s disk slow (every WAL write first waits `delay`),
    /// or fast again with None. Takes effect at its next write.
    pub fn slow_disk(&self, index: usize, delay: Option<Duration>) {
        let file = self.disk_delay_file(index);
        match delay {
            Some(delay) => std::fs::write(&file, delay.as_millis().to_string()).expect("writes the delay"),
            None => std::fs::remove_file(&file).expect("removes the delay"),
        }
    }

    /// Starts the members at `indexes` together (a restarted member waits for a
    /// quorum before it serves) and waits until each serves.
    pub fn start_members(&mut self, indexes: &[usize]) {
        let mut starting: Vec<(usize, Starting)> = indexes.iter().map(|&index| (index, self.spawn(index))).collect();
        while !starting.is_empty() {
            let (index, member) = starting.remove(0);
            assert!(
                self.members[index].process.is_none(),
                "member {index} is already running"
            );
            match member.try_ready() {
                Ok(process) => self.members[index].process = Some(process),
                // The others' logs say what the cluster did meanwhile.
                Err(failure) => {
                    let others: Vec<String> = starting
                        .iter()
                        .map(|(other, member)| format!("member {other} so far:\n{}", member.log_text()))
                        .collect();
                    panic!("member {index}: {failure}\n{}", others.join("\n"));
                }
            }
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self, index: usize) {
        let process = self.members[index].process.take().expect("the member runs");
        process.kill();
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, index: usize, signal: i32) {
        let process = self.members[index].process.as_ref().expect("the member runs");
        // SAFETY: kill(2) on our own child's pid.
        let result = unsafe { libc::kill(process.pid() as i32, signal) };
        assert_eq!(result, 0, "signal {signal} to member {index}");
    }

    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].endpoint()
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&index| self.members[index].process.is_some())
            .collect()
    }

    /// A counter from member `index`'s `/metrics` (counted since it started).
    pub fn metric(&self, index: usize, name: &str) -> u64 {
        let addr = format!("127.0.0.1:{}", self.members[index].client_port)
            .parse()
            .expect("an address");
        let (status, body) = super::http_get(addr, "/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} is in /metrics"))
    }

    /// A Maintenance client for member `index` whose calls give up after
    /// `timeout`, or None if the member does not accept a connection in a second.
    async fn maintenance(&self, index: usize, timeout: Duration) -> Option<MaintenanceClient<Channel>> {
        let channel = Channel::from_shared(self.endpoint(index))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .timeout(timeout)
            .connect()
            .await
            .ok()?;
        Some(MaintenanceClient::new(channel))
    }

    /// Status of member `index`, or None if it does not answer within a second.
    pub async fn status(&self, index: usize) -> Option<pb::StatusResponse> {
        let mut maintenance = self.maintenance(index, Duration::from_secs(1)).await?;
        let response = maintenance.status(pb::StatusRequest {}).await.ok()?;
        Some(response.into_inner())
    }

    /// HashKV of member `index` at its current revision, with that revision,
    /// or None if it does not answer (hashing a large store takes a while).
    pub async fn hash_kv(&self, index: usize) -> Option<(u32, i64)> {
        let mut maintenance = self.maintenance(index, Duration::from_secs(10)).await?;
        let response = maintenance
            .hash_kv(pb::HashKvRequest { revision: 0 })
            .await
            .ok()?
            .into_inner();
        Some((response.hash, response.header?.revision))
    }

    /// Waits until every running member reports one HashKV at one revision,
    /// failing after `within`; returns them.
    pub async fn wait_converged(&self, within: Duration) -> (u32, i64) {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for index in self.running() {
                seen.push(self.hash_kv(index).await);
            }
            if let Some(Some(first)) = seen.first().copied() {
                if seen.iter().all(|hash| *hash == Some(first)) {
                    return first;
                }
            }
            assert!(Instant::now() < deadline, "members did not converge: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until every running member names the same leader, and
    /// returns that leader's index.
    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut leaders = Vec::new();
            for index in self.running() {
                leaders.push(self.status(index).await.map(|status| status.leader));
            }
            if let Some(Some(leader)) = leaders.first().copied() {
                if leader != 0 && leaders.iter().all(|seen| *seen == Some(leader)) {
                    if let Some(index) = self.index_of(leader).await {
                        return index;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the running member with id `member_id`.
    pub async fn index_of(&self, member_id: u64) -> Option<usize> {
        for index in self.running() {
            if let Some(status) = self.status(index).await {
                if status.header.map(|header| header.member_id) == Some(member_id) {
                    return Some(index);
                }
            }
        }
        None
    }
}
