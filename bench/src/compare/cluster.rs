//! `compare --members N`: each run against a fresh cluster of N members on
//! 127.0.0.1, each member with its own data dir and ports, ringkv's and etcd's
//! started with the same etcd flags; the load is spread over the members'
//! client URLs and the server CPU summed over their processes. Every member
//! is killed when its cluster is dropped, however the run ended.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use super::certs::TlsFiles;
use super::server::{client_url, Server, ServerKind, PROBE_PAUSE};
use super::Session;
use crate::connect::Tls;
use crate::BenchError;

/// Largest `--members`: etcd's documentation advises at most 7 voting members.
pub const MEMBERS_MAX: usize = 7;

/// What each run starts, for `compare`'s header.
pub fn describe(members: usize) -> String {
    match members {
        1 => "a fresh server on an empty data dir".to_string(),
        n => format!(
            "a fresh cluster of {n} members on 127.0.0.1, each on an empty data dir, the same etcd flags for both, \
             connections round-robin over the members"
        ),
    }
}

/// The ports one member listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    pub client: u16,
    pub peer: u16,
}

/// Member `index`'s name: m0, m1, ...
fn member_name(index: usize) -> String {
    format!("m{index}")
}

fn peer_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// etcd's flags for member `index` of the cluster whose members listen on
/// `ports`, with its data in `data_dir`; ringkv takes the same flags. Clients
/// over mutual TLS with `tls` (peers talk plain http either way); everything
/// else, fsync included, is the server's default.
pub fn member_args(data_dir: &Path, index: usize, ports: &[MemberPorts], tls: Option<&TlsFiles>) -> Vec<String> {
    assert!(index < ports.len(), "member {index} of {}", ports.len());
    let me = ports[index];
    let client = client_url(me.client, tls.is_some());
    let initial_cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, member)| format!("{}={}", member_name(i), peer_url(member.peer)))
        .collect();
    let mut args = vec![
        "--name".to_string(),
        member_name(index),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--listen-client-urls".to_string(),
        client.clone(),
        "--advertise-client-urls".to_string(),
        client,
        "--listen-peer-urls".to_string(),
        peer_url(me.peer),
        "--initial-advertise-peer-urls".to_string(),
        peer_url(me.peer),
        "--initial-cluster".to_string(),
        initial_cluster.join(","),
    ];
    if let Some(tls) = tls {
        args.extend(tls.server_flags());
    }
    args
}

/// `count` distinct ports on 127.0.0.1 that were free a moment ago (all held
/// open until all are chosen, so none is handed out twice).
fn free_ports(count: usize) -> Result<Vec<u16>, BenchError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Server(format!("no free port on 127.0.0.1: {e}")))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Server(format!("no free port on 127.0.0.1: {e}")))
}

/// The running members of one server's cluster; all killed when dropped.
pub struct Cluster {
    members: Vec<Server>,
}

impl Cluster {
    /// Starts `members` fresh `kind` servers in `run_dir`. One member is
    /// started as `compare` always started a server (`Server::spawn`: data in
    /// `run_dir/data`); more form a cluster, member `i` in `run_dir/m<i>/`
    /// with its data in `data/` and output in `server.log`. If a member fails
    /// to start, those already started are killed before the error returns.
    pub fn spawn(
        kind: ServerKind,
        bin: &Path,
        run_dir: &Path,
        members: usize,
        tls: Option<&TlsFiles>,
    ) -> Result<Cluster, BenchError> {
        assert!((1..=MEMBERS_MAX).contains(&members), "checked when parsing flags");
        if members == 1 {
            return Ok(Cluster {
                members: vec![Server::spawn(kind, bin, run_dir, tls)?],
            });
        }
        let ports: Vec<MemberPorts> = free_ports(2 * members)?
            .chunks(2)
            .map(|pair| MemberPorts {
                client: pair[0],
                peer: pair[1],
            })
            .collect();
        // Built up in place: on an error, dropping the cluster kills the
        // members started so far.
        let mut cluster = Cluster {
            members: Vec::with_capacity(members),
        };
        for (index, member_ports) in ports.iter().enumerate() {
            let dir = run_dir.join(member_name(index));
            std::fs::create_dir(&dir).map_err(|e| BenchError::Server(format!("creating {}: {e}", dir.display())))?;
            let args = member_args(&dir.join("data"), index, &ports, tls);
            let server = Server::spawn_with_args(kind, bin, args, member_ports.client, &dir.join("server.log"), tls)?;
            cluster.members.push(server);
        }
        Ok(cluster)
    }

    /// Waits until every member has answered a linearizable Range (so the
    /// cluster has a leader and each member serves through it), at most
    /// `timeout` in all; returns how long that took. Fails as soon as any
    /// member has exited, also one that already answered.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, BenchError> {
        if let [server] = self.members.as_mut_slice() {
            return server.wait_ready(timeout).await;
        }
        let start = Instant::now();
        let mut ready = vec![false; self.members.len()];
        loop {
            for (index, member) in self.members.iter_mut().enumerate() {
                if let Some(status) = member.exited() {
                    return Err(BenchError::Server(format!(
                        "member {} exited before serving ({status}); {}",
                        member_name(index),
                        member.log_tail()
                    )));
                }
                if !ready[index] {
                    ready[index] = member.answers_linearizable_read().await;
                }
            }
            let Some(waiting) = ready.iter().position(|r| !r) else {
                return Ok(start.elapsed());
            };
            if start.elapsed() >= timeout {
                return Err(BenchError::Server(format!(
                    "member {} did not serve within {}; {}",
                    member_name(waiting),
                    humantime::format_duration(timeout),
                    self.members[waiting].log_tail()
                )));
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }

    /// The members' client URLs, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint().to_string()).collect()
    }

    /// The members' process ids, for their CPU time.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Server::pid).collect()
    }

    /// What a client trusts and presents (None: plain text); the same for
    /// every member.
    pub fn client_tls(&self) -> Option<&Tls> {
        self.members[0].client_tls()
    }

    /// Kills every member; for each that had exited on its own, a line
    /// naming it with its status and the last lines of its log.
    pub fn stop(self) -> Vec<String> {
        let many = self.members.len() > 1;
        self.members
            .into_iter()
            .enumerate()
            .filter_map(|(index, member)| {
                let tail = member.log_tail();
                let status = member.stop()?;
                let who = if many {
                    format!("member {}", member_name(index))
                } else {
                    "the server".to_string()
                };
                Some(format!("{who} exited during the run ({status}); {tail}"))
            })
            .collect()
    }
}

impl Session<'_> {
    /// Starts a fresh cluster of `--members` `kind` servers under an empty
    /// run dir of its own (`<name>-<round>-<kind>`), waits until every member
    /// serves, runs `run` against it, then stops every member (noting any that
    /// had exited on its own) and removes the run dir unless kept. However
    /// this returns, no member is left running.
    pub(super) fn on_fresh_cluster<T>(
        &mut self,
        kind: ServerKind,
        name: &str,
        round: usize,
        label: &str,
        run: impl FnOnce(&Self, &Cluster) -> Result<T, BenchError>,
    ) -> Result<T, BenchError> {
        let bin = match kind {
            ServerKind::Ringkv => self.ringkv.path.clone(),
            _ => self.baseline.path.clone(),
        };
        let run_dir = self.root.run_dir(&format!("{name}-{round}-{}", kind.name()))?;
        let mut cluster = Cluster::spawn(kind, &bin, &run_dir, self.args.members, self.tls.as_ref())?;
        let ready_after = self.runtime.block_on(cluster.wait_ready(self.args.start_timeout))?;
        self.progress.note(&format!(
            "{label}: serving on {} after {} ms",
            cluster.endpoints().join(","),
            ready_after.as_millis()
        ));
        let result = run(self, &cluster);
        for exited in cluster.stop() {
            self.notes.push(format!("{label}: {} {exited}", kind.name()));
        }
        if !self.args.keep_data {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn three() -> Vec<MemberPorts> {
        vec![
            MemberPorts {
                client: 1000,
                peer: 1001,
            },
            MemberPorts {
                client: 1002,
                peer: 1003,
            },
            MemberPorts {
                client: 1004,
                peer: 1005,
            },
        ]
    }

    #[test]
    fn each_member_gets_its_name_ports_and_the_whole_initial_cluster() {
        let args = member_args(Path::new("/d/m1/data"), 1, &three(), None).join(" ");
        assert_eq!(
            args,
            "--name m1 --data-dir /d/m1/data \
             --listen-client-urls http://127.0.0.1:1002 --advertise-client-urls http://127.0.0.1:1002 \
             --listen-peer-urls http://127.0.0.1:1003 --initial-advertise-peer-urls http://127.0.0.1:1003 \
             --initial-cluster m0=http://127.0.0.1:1001,m1=http://127.0.0.1:1003,m2=http://127.0.0.1:1005"
        );
    }

    #[test]
    fn members_serve_clients_over_tls_and_peers_in_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::make(dir.path()).unwrap();
        let args = member_args(Path::new("/d"), 0, &three(), Some(&tls));
        let joined = args.join(" ");
        assert!(
            joined.contains("--listen-client-urls https://127.0.0.1:1000"),
            "{joined}"
        );
        assert!(joined.contains("--listen-peer-urls http://127.0.0.1:1001"), "{joined}");
        assert!(args.ends_with(&tls.server_flags()), "{joined}");
    }

    #[test]
    fn no_member_flag_turns_fsync_off() {
        for index in 0..3 {
            let args = member_args(Path::new("/d"), index, &three(), None);
            assert!(
                !args.iter().any(|a| a.contains("unsafe") || a.contains("fsync")),
                "{args:?}"
            );
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(6).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6);
    }

    /// A stand-in server: a shell script that appends its pid to `pids`,
    /// exits with status 3 if it is member m1 and `m1_exits`, and otherwise
    /// waits (serving nothing) until killed.
    fn fake_server(dir: &Path, m1_exits: bool) -> std::path::PathBuf {
        let pids = dir.join("pids");
        let exit_m1 = if m1_exits {
            "case \" $* \" in *\" --name m1 \"*) exit 3;; esac\n"
        } else {
            ""
        };
        // The shell itself waits (not an exec'd sleep), so its command line
        // keeps the member's flags for `processes_mentioning`.
        let script = format!(
            "#!/bin/sh\necho $$ >> {}\n{exit_m1}while :; do sleep 1; done\n",
            pids.display()
        );
        let bin = dir.join("fake-server");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// The pids the fake servers wrote, once `count` have (each writes as it starts).
    fn started_pids(dir: &Path, count: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
            let pids: Vec<u32> = text.lines().map(|line| line.trim().parse().unwrap()).collect();
            if pids.len() >= count || Instant::now() > deadline {
                assert_eq!(pids.len(), count, "{text}");
                return pids;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// A zombie: exited, not yet waited for.
    fn exited_unreaped(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
    }

    fn sorted(pids: &[u32]) -> Vec<u32> {
        let mut pids = pids.to_vec();
        pids.sort_unstable();
        pids
    }

    /// Processes whose command line mentions `path`, once none has for a
    /// moment or after 3 s: a fake server's shell forks for each `sleep`, and
    /// the child shows the shell's command line until it execs, even after the
    /// shell was killed; a member left running shows it the whole time.
    fn processes_left_mentioning(path: &Path) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = processes_mentioning(path);
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes whose command line mentions `path`.
    fn processes_mentioning(path: &Path) -> Vec<String> {
        let needle = path.display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_string_lossy().into_owned();
                let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(&needle).then(|| format!("{name}: {cmdline}"))
            })
            .collect()
    }

    #[test]
    fn a_member_that_fails_to_start_stops_the_members_already_started() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_server(dir.path(), false);
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        // m2's directory cannot be made: a file has its name.
        std::fs::write(run_dir.join("m2"), "").unwrap();
        let error = Cluster::spawn(ServerKind::Etcd, &bin, &run_dir, 3, None)
            .err()
            .expect("m2 cannot start");
        assert!(error.to_string().contains("m2"), "{error}");
        // m0 and m1 were started (their logs were opened for them)...
        for member in ["m0", "m1"] {
            assert!(
                run_dir.join(member).join("server.log").is_file(),
                "{member} was not started"
            );
        }
        // ...and are stopped: no process is left with their flags.
        let left = processes_left_mentioning(&run_dir);
        assert!(left.is_empty(), "still running: {left:?}");
    }

    #[test]
    fn a_member_that_exits_fails_the_wait_and_the_others_are_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_server(dir.path(), true);
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let mut cluster = Cluster::spawn(ServerKind::Ringkv, &bin, &run_dir, 3, None).unwrap();
        assert_eq!(cluster.endpoints().len(), 3);
        let pids = started_pids(dir.path(), 3);
        let mut members = cluster.pids();
        members.sort_unstable();
        assert_eq!(members, sorted(&pids));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime
            .block_on(cluster.wait_ready(Duration::from_secs(30)))
            .unwrap_err()
            .to_string();
        assert!(error.contains("m1 exited before serving"), "{error}");
        // By pid: a shell forking its `sleep` briefly shows its command line twice.
        let alive = pids
            .iter()
            .filter(|&&pid| running(pid) && !exited_unreaped(pid))
            .count();
        assert_eq!(alive, 2, "m0 and m2 still run until dropped");
        drop(cluster);
        assert_eq!(processes_left_mentioning(&run_dir), Vec::<String>::new());
        assert!(pids.iter().all(|&pid| !running(pid)), "{pids:?} still run");
    }

    #[test]
    fn stopping_a_cluster_stops_every_member_and_names_the_one_that_exited() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_server(dir.path(), true);
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let cluster = Cluster::spawn(ServerKind::Etcd, &bin, &run_dir, 3, None).unwrap();
        let pids = started_pids(dir.path(), 3);
        // m1 exits at once, as a member that crashes during a run would.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pids.iter().any(|&pid| exited_unreaped(pid)) {
            assert!(Instant::now() < deadline, "m1 did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        let exited = cluster.stop();
        assert_eq!(exited.len(), 1, "{exited:?}");
        assert!(exited[0].starts_with("member m1 exited during the run"), "{exited:?}");
        assert!(pids.iter().all(|&pid| !running(pid)), "{pids:?} still run");
    }
}
