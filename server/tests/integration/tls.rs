//! TLS on every port, with real processes on 127.0.0.1 and certificates made
//! here (rcgen) for each test: kubeadm's etcd command line served to etcdctl
//! over mutual TLS side by side with etcd 3.4 started with the same flags and
//! certificates, the same refusals (no client certificate, another CA's, an
//! expired one, plain text to the TLS port) with the member serving on;
//! certificate rotation without a restart; a 3-member cluster over peer mTLS
//! that refuses peers without the CA's certificate; client certificates held
//! to `--client-cert-allowed-hostname`; etcd's environment variables and the
//! etcd flags ringkv answers by name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::support::{free_port, http_get, KillOnDrop, Ringkv, START_TIMEOUT};

/// A CA that issues certificates into a directory.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) cert_path: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key as files.
#[derive(Clone)]
pub(crate) struct Pair {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Ca {
    pub(crate) fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert_path,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for server and client use, valid for 127.0.0.1,
    /// 127.0.0.2 and localhost, with common name `cn`, written as `file`.crt
    /// and `file`.key.
    pub(crate) fn issue(&self, file: &str, cn: &str) -> Pair {
        self.issue_with(file, cn, |_| {})
    }

    fn issue_with(&self, file: &str, cn: &str, change: impl FnOnce(&mut CertificateParams)) -> Pair {
        let key = KeyPair::generate().unwrap();
        let hosts = ["127.0.0.1", "127.0.0.2", "localhost"].map(str::to_string);
        let mut params = CertificateParams::new(hosts.to_vec()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        change(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

pub(crate) fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are text")
}

/// etcdctl against `endpoint` with TLS flags `tls` (and short timeouts: a
/// refused handshake fails at the dial timeout): success and stdout+stderr,
/// the JSON client log lines dropped.
pub(crate) fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String) {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "3s",
        ])
        .args(tls)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl is installed (Debian package etcd-client)");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n");
    (output.status.success(), text.trim().to_string())
}

pub(crate) fn client_flags(ca: &Path, pair: Option<&Pair>) -> Vec<String> {
    let mut flags = vec![format!("--cacert={}", path(ca))];
    if let Some(pair) = pair {
        flags.push(format!("--cert={}", path(&pair.cert)));
        flags.push(format!("--key={}", path(&pair.key)));
    }
    flags
}

/// Waits until something accepts connections on `addr`.
fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kubeadm's etcd flags (1.24-1.31) for a member `name` on `ip`, its client
/// port also on 127.0.0.1, as the manifest writes them.
pub(crate) fn kubeadm_flags(
    name: &str,
    ip: &str,
    ports: (u16, u16, u16),
    dir: &Path,
    server: &Pair,
    peer: &Pair,
    ca: &Path,
) -> Vec<String> {
    let (client, peer_port, metrics) = ports;
    vec![
        format!("--advertise-client-urls=https://{ip}:{client}"),
        format!("--cert-file={}", path(&server.cert)),
        "--client-cert-auth=true".to_string(),
        format!("--data-dir={}", path(dir)),
        "--experimental-initial-corrupt-check=true".to_string(),
        "--experimental-watch-progress-notify-interval=5s".to_string(),
        format!("--initial-advertise-peer-urls=https://{ip}:{peer_port}"),
        format!("--initial-cluster={name}=https://{ip}:{peer_port}"),
        format!("--key-file={}", path(&server.key)),
        format!("--listen-client-urls=https://127.0.0.1:{client},https://{ip}:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--listen-peer-urls=https://{ip}:{peer_port}"),
        format!("--name={name}"),
        format!("--peer-cert-file={}", path(&peer.cert)),
        "--peer-client-cert-auth=true".to_string(),
        format!("--peer-key-file={}", path(&peer.key)),
        format!("--peer-trusted-ca-file={}", path(ca)),
        "--snapshot-count=10000".to_string(),
        format!("--trusted-ca-file={}", path(ca)),
    ]
}

#[test]
fn kubeadms_command_line_serves_etcdctl_over_mutual_tls_and_refuses_what_etcd_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let server = ca.issue("server", "kube-etcd");
    let peer = ca.issue("peer", "kube-etcd-peer");
    let client = ca.issue("client", "kube-apiserver-etcd-client");
    let stranger = other.issue("stranger", "kube-apiserver-etcd-client");
    let expired = ca.issue_with("expired", "kube-apiserver-etcd-client", |params| {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });

    // The same flags for both, each on ports of its own; "IP" is 127.0.0.2.
    let ringkv_ports = (free_port(), free_port(), free_port());
    let etcd_ports = (free_port(), free_port(), free_port());
    let ringkv_args = kubeadm_flags(
        "node-a",
        "127.0.0.2",
        ringkv_ports,
        &dir.path().join("ringkv"),
        &server,
        &peer,
        &ca.cert_path,
    );
    let etcd_args = kubeadm_flags(
        "node-a",
        "127.0.0.2",
        etcd_ports,
        &dir.path().join("etcd"),
        &server,
        &peer,
        &ca.cert_path,
    );
    // Started as written: no flag of the test harness's added.
    let ringkv_log_path = dir.path().join("ringkv.log");
    let ringkv_log_file = std::fs::File::create(&ringkv_log_path).unwrap();
    let _ringkv = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(&ringkv_args)
            .stdout(Stdio::null())
            .stderr(ringkv_log_file)
            .spawn()
            .unwrap(),
    );
    let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let _etcd = KillOnDrop(
        Command::new("etcd")
            .args(&etcd_args)
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .expect("etcd is installed (Debian package etcd-server)"),
    );
    let ringkv_endpoint = format!("https://127.0.0.1:{}", ringkv_ports.0);
    let etcd_endpoint = format!("https://127.0.0.1:{}", etcd_ports.0);
    wait_listening(format!("127.0.0.1:{}", ringkv_ports.0).parse().unwrap(), "ringkv");
    wait_listening(format!("127.0.0.1:{}", etcd_ports.0).parse().unwrap(), "etcd");
    let ringkv_log = || std::fs::read_to_string(&ringkv_log_path).unwrap();
    // kubeadm's corruption check is one of ringkv's flags now, and a new
    // member has nothing to compare (see the corruption suite).
    assert!(
        !ringkv_log().contains("corrupt-check=true ignored"),
        "kubeadm's corruption-check flag is taken, not warned about: {}",
        ringkv_log()
    );

    let trusted = client_flags(&ca.cert_path, Some(&client));
    for endpoint in [&ringkv_endpoint, &etcd_endpoint] {
        // etcd takes a moment to elect itself after it listens.
        let deadline = Instant::now() + START_TIMEOUT;
        while !etcdctl(endpoint, &trusted, &["put", "greeting", "hello"]).0 {
            assert!(Instant::now() < deadline, "{endpoint} never took a put");
        }
    }
    // Both client URLs serve, the second on "IP".
    let on_ip = format!("https://127.0.0.2:{}", ringkv_ports.0);
    assert_eq!(
        etcdctl(&on_ip, &trusted, &["get", "greeting"]),
        (true, "greeting\nhello".to_string())
    );

    // The same commands, the same answers: accepted ones and refused ones.
    let plain = |endpoint: &str| endpoint.replace("https://", "http://");
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        ("get", trusted.clone(), vec!["get", "greeting"]),
        (
            "no client certificate",
            client_flags(&ca.cert_path, None),
            vec!["get", "greeting"],
        ),
        (
            "another CA's certificate",
            client_flags(&ca.cert_path, Some(&stranger)),
            vec!["get", "greeting"],
        ),
        (
            "an expired certificate",
            client_flags(&ca.cert_path, Some(&expired)),
            vec!["get", "greeting"],
        ),
        (
            "a server CA the client does not trust",
            client_flags(&other.cert_path, Some(&client)),
            vec!["get", "greeting"],
        ),
        ("plain text to the TLS port", Vec::new(), vec!["get", "greeting"]),
    ];
    let answers: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(what, tls, args)| {
                let (ringkv_endpoint, etcd_endpoint) = (&ringkv_endpoint, &etcd_endpoint);
                scope.spawn(move || {
                    let (ringkv_to, etcd_to) = if tls.is_empty() {
                        (plain(ringkv_endpoint), plain(etcd_endpoint))
                    } else {
                        (ringkv_endpoint.clone(), etcd_endpoint.clone())
                    };
                    (*what, etcdctl(&ringkv_to, tls, args), etcdctl(&etcd_to, tls, args))
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (what, ringkv_answer, etcd_answer) in &answers {
        assert_eq!(ringkv_answer, etcd_answer, "{what}: ringkv, then etcd");
    }
    let refused = &answers[1].1;
    assert_eq!(*refused, (false, "Error: context deadline exceeded".to_string()));

    // The member serves on after every refusal, and kubeadm's probe passes.
    assert_eq!(
        etcdctl(&ringkv_endpoint, &trusted, &["put", "after", "refusals"]),
        (true, "OK".to_string())
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", ringkv_ports.2).parse().unwrap();
    let (status, body) = http_get(metrics, "/health?exclude=NOSPACE&serializable=true");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""health":"true""#), "{body}");
    let log = ringkv_log();
    assert!(log.contains("rejected connection from"), "{log}");
}

/// A TLS connection to `addr` trusting `ca`, presenting `pair`; blocking.
fn tls_connect(addr: SocketAddr, ca: &Path, pair: &Pair) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_file(&pair.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&pair.key).unwrap();
    #[allow(deprecated)] // the server's provider too (`tls::protocol`)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// The common name of the certificate the server presented.
fn server_common_name(stream: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> String {
    let certs = stream.conn.peer_certificates().unwrap();
    ringkv_server::tls::identity::common_name(&certs[0]).unwrap()
}

/// GET /health on a kept-alive HTTP/1.1 connection: the status code.
fn health_on(stream: &mut impl ReadWrite) -> u16 {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|n| n.trim().parse().unwrap())
        })
        .expect("a content length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn a_renewed_certificate_is_served_to_new_connections_while_old_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let client = ca.issue("client", "root");
    let server = ca.issue("server", "before-renewal");
    let port = free_port();
    let args = [
        format!("--listen-client-urls=https://127.0.0.1:{port}"),
        format!("--advertise-client-urls=https://127.0.0.1:{port}"),
        format!("--cert-file={}", path(&server.cert)),
        format!("--key-file={}", path(&server.key)),
        format!("--trusted-ca-file={}", path(&ca.cert_path)),
        "--client-cert-auth".to_string(),
    ];
    let ringkv = Ringkv::spawn(&dir.path().join("data"), &args).ready();
    let addr = ringkv.addr;
    let mut old = tls_connect(addr, &ca.cert_path, &client);
    assert_eq!(server_common_name(&old), "before-renewal");
    assert_eq!(health_on(&mut old), 200);

    // As cert-manager renews: new files moved over the old ones.
    let renewed = ca.issue("renewed", "after-renewal");
    std::fs::rename(&renewed.key, &server.key).unwrap();
    std::fs::rename(&renewed.cert, &server.cert).unwrap();

    let mut new = tls_connect(addr, &ca.cert_path, &client);
    assert_eq!(server_common_name(&new), "after-renewal");
    assert_eq!(health_on(&mut new), 200);
    assert_eq!(
        health_on(&mut old),
        200,
        "a connection made before the renewal keeps working"
    );
    assert!(ringkv.log.text().contains("certificate files changed"));
}

/// One member of a cluster over peer mTLS: its ports and arguments.
struct PeerMember {
    client_port: u16,
    peer_port: u16,
    args: Vec<String>,
    data_dir: PathBuf,
}

impl PeerMember {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// Whether the member closes `stream` (having sent `bytes`) within `limit`.
fn closed_within(mut stream: TcpStream, bytes: &[u8], limit: Duration) -> bool {
    let _ = stream.write_all(bytes);
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue, // a TLS alert, say
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A TLS handshake with `addr` presenting `pair` (or nothing): whether it
/// completed and the server then accepted a byte.
fn peer_handshake_accepted(addr: SocketAddr, ca: &Path, pair: Option<&Pair>) -> bool {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    #[allow(deprecated)] // the server's provider too (`tls::protocol`)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match pair {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&pair.cert).unwrap()],
                PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    // TLS 1.3: the client's certificate is judged after the client finishes,
    // so the refusal arrives as an alert on the first read.
    let mut byte = [0u8; 1];
    stream.write_all(b"x").is_ok() && stream.flush().is_ok() && !matches!(stream.read(&mut byte), Err(_) | Ok(0))
}

#[test]
fn a_cluster_over_peer_mtls_replicates_survives_its_leader_and_refuses_peers_without_the_cas_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(index, (_, peer))| format!("m{index}=https://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<PeerMember> = ports
        .iter()
        .enumerate()
        .map(|(index, &(client_port, peer_port))| {
            let pair = ca.issue(&format!("m{index}"), &format!("m{index}"));
            PeerMember {
                client_port,
                peer_port,
                data_dir: dir.path().join(format!("m{index}")),
                args: vec![
                    format!("--name=m{index}"),
                    format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                    format!("--listen-peer-urls=https://127.0.0.1:{peer_port}"),
                    format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer_port}"),
                    format!("--initial-cluster={initial_cluster}"),
                    format!("--peer-cert-file={}", path(&pair.cert)),
                    format!("--peer-key-file={}", path(&pair.key)),
                    format!("--peer-trusted-ca-file={}", path(&ca.cert_path)),
                    "--peer-client-cert-auth=true".to_string(),
                    "--heartbeat-interval=50".to_string(),
                    "--election-timeout=500".to_string(),
                    // Their HashKV queries go over the same mutual TLS.
                    "--experimental-initial-corrupt-check=true".to_string(),
                    "--experimental-corrupt-check-time=1s".to_string(),
                ],
            }
        })
        .collect();
    let starting: Vec<_> = members
        .iter()
        .map(|member| Ringkv::spawn(&member.data_dir, &member.args))
        .collect();
    let mut running: Vec<Option<Ringkv>> = starting.into_iter().map(|starting| Some(starting.ready())).collect();

    let put = |member: &PeerMember, key: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, text) = etcdctl(&member.endpoint(), &[], &["put", key, "v"]);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no put through {}: {text}",
                member.endpoint()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let sees = |member: &PeerMember, key: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, text) = etcdctl(&member.endpoint(), &[], &["get", key, "--consistency=s"]);
            if text == format!("{key}\nv") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw {key}: {text}",
                member.endpoint()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    put(&members[0], "first");
    sees(&members[2], "first");

    // Peers without the CA's certificate are refused in the handshake, and
    // the cluster does not notice.
    let peer_port: SocketAddr = format!("127.0.0.1:{}", members[0].peer_port).parse().unwrap();
    let stranger = other.issue("stranger", "m1");
    assert!(
        !peer_handshake_accepted(peer_port, &ca.cert_path, None),
        "no certificate"
    );
    assert!(
        !peer_handshake_accepted(peer_port, &ca.cert_path, Some(&stranger)),
        "another CA's"
    );
    let plain = TcpStream::connect(peer_port).unwrap();
    assert!(
        closed_within(plain, &[0, 0, 0, 24, 0, 0, 0, 0, 1, 2, 3], Duration::from_secs(10)),
        "plain text to the TLS peer port is closed"
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", members[0].client_port).parse().unwrap();
    let (_, text) = http_get(metrics, "/metrics");
    let rejected: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("ringkv_peer_connections_rejected_total "))
        .and_then(|count| count.trim().parse().ok())
        .expect("the rejected peer connections are counted");
    assert!(rejected >= 3, "{text}");
    put(&members[1], "after-strangers");

    // The leader goes; the others elect one over TLS; it comes back and catches up.
    let (_, status) = etcdctl(&members[0].endpoint(), &[], &["endpoint", "status", "-w", "fields"]);
    let leader_id = field(&status, "Leader");
    let leader = (0..3)
        .find(|&index| {
            let (_, status) = etcdctl(&members[index].endpoint(), &[], &["endpoint", "status", "-w", "fields"]);
            field(&status, "MemberID") == leader_id
        })
        .expect("one member leads");
    running[leader].take().unwrap().kill();
    let survivor = (leader + 1) % 3;
    put(&members[survivor], "after-leader");
    running[leader] = Some(Ringkv::spawn(&members[leader].data_dir, &members[leader].args).ready());
    let log = running[leader].as_ref().unwrap().log.text();
    assert!(
        log.contains("initial corruption checking passed") && !log.contains("failed hash kv request"),
        "both peers answered the check at start over mutual TLS: {log}"
    );
    sees(&members[leader], "after-leader");
    for member in &members {
        sees(member, "after-strangers");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let checked = "finished peer corruption check number_of_peers_checked=2";
    while !running
        .iter()
        .flatten()
        .any(|member| member.log.text().contains(checked))
    {
        assert!(
            Instant::now() < deadline,
            "no periodic check asked both peers over mutual TLS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A field of `etcdctl endpoint status -w fields`: `"Leader" : 123`.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("\"{name}\" : ")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_string()
}

#[test]
fn etcds_variables_set_flags_and_the_flags_ringkv_lacks_are_answered_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringkv"));
    command
        .env("ETCD_NAME", "from-env")
        .env("ETCD_DATA_DIR", dir.path().join("env"))
        .env("ETCD_LISTEN_CLIENT_URLS", &url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &url)
        .env("ETCD_MAX_WALS", "5")
        // A flag wins over its variable, as in etcd.
        .args(["--name", "from-flag"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = KillOnDrop(command.spawn().unwrap());
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), "ringkv");
    let (ok, members) = etcdctl(&url, &[], &["member", "list"]);
    assert!(ok && members.contains("from-flag"), "{members}");
    assert!(
        dir.path().join("env").exists(),
        "ETCD_DATA_DIR names the data directory"
    );
    drop(child);

    for (args, said) in [
        (vec!["--discovery=https://discovery.etcd.io/x"], "ringkv does not support --discovery yet"),
        (vec!["-force-new-cluster"], "ringkv does not support --force-new-cluster yet"),
        (
            vec!["--listen-client-urls=https://127.0.0.1:1"],
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:1 with HTTPS scheme",
        ),
        (
            vec!["--listen-client-urls=https://127.0.0.1:1", "--cert-file=/nonexistent.crt", "--key-file=/nonexistent.key"],
            "open /nonexistent.crt: no such file or directory",
        ),
    ] {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let (status, log) = Ringkv::spawn(&dir.path().join("refused"), &args).failed(START_TIMEOUT);
        assert!(!status.success());
        assert!(log.contains(said), "{args:?}: {log}");
    }
}

#[test]
fn auto_tls_serves_a_self_signed_certificate_to_clients_that_skip_verification() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let args = [
        format!("--listen-client-urls={url}"),
        format!("--advertise-client-urls={url}"),
        "--auto-tls".to_string(),
    ];
    let _ringkv = Ringkv::spawn(&dir.path().join("data"), &args).ready();
    // etcdctl 3.4 dials https in plain text unless told --insecure-transport=false.
    let skip = [
        "--insecure-skip-tls-verify".to_string(),
        "--insecure-transport=false".to_string(),
    ];
    assert_eq!(etcdctl(&url, &skip, &["put", "k", "v"]), (true, "OK".to_string()));
    let (ok, _) = etcdctl(&url, &["--insecure-transport=false".to_string()], &["get", "k"]);
    assert!(!ok, "a self-signed certificate is not trusted by a verifying client");
}

#[test]
fn client_cert_allowed_hostname_refuses_client_certificates_not_valid_for_that_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue("server", "server");
    // Valid for 127.0.0.1, 127.0.0.2 and localhost.
    let local_client = ca.issue("local-client", "root");
    let elsewhere_client = ca.issue_with("elsewhere-client", "root", |params| {
        params.subject_alt_names = vec![rcgen::SanType::DnsName("elsewhere.example".try_into().unwrap())];
    });
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let args = [
        format!("--listen-client-urls={url}"),
        format!("--advertise-client-urls={url}"),
        format!("--cert-file={}", path(&server.cert)),
        format!("--key-file={}", path(&server.key)),
        format!("--trusted-ca-file={}", path(&ca.cert_path)),
        "--client-cert-auth".to_string(),
        "--client-cert-allowed-hostname=localhost".to_string(),
    ];
    let ringkv = Ringkv::spawn(&dir.path().join("data"), &args).ready();

    let (ok, said) = etcdctl(
        &url,
        &client_flags(&ca.cert_path, Some(&elsewhere_client)),
        &["put", "k", "v"],
    );
    assert!(
        !ok,
        "a certificate the CA signed, but not for localhost, is refused: {said}"
    );
    assert_eq!(
        etcdctl(
            &url,
            &client_flags(&ca.cert_path, Some(&local_client)),
            &["put", "k", "v"]
        ),
        (true, "OK".to_string()),
        "a certificate valid for localhost is served, and the refusal left the member serving"
    );
    let log = ringkv.log.text();
    let refusal = log.lines().find(|line| line.contains("rejected connection from"));
    assert!(
        refusal.is_some_and(|line| line.contains("Hostname(\"localhost\")")),
        "the refusal names the allowed hostname: {log}"
    );
}
