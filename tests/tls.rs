//! HTTPS (feature `tls`): a private CA and a certificate for 127.0.0.1 made
//! with the `openssl` command in a temporary folder, a registry serving
//! them, and every client over `https://`; what hostile clients can do to
//! the TLS side; the start refusing bad files.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regcenter::{CallOptions, Discovery, Heartbeat, RegistryDiscovery, RegistryServer};

use crate::common::process::regcenter;
use crate::common::{error_chain, threads_named, wait_until};

/// A CA, a server certificate it signed for `IP:127.0.0.1`, their keys,
/// and a second CA that signed nothing of ours; removed on drop.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = crate::common::temp_dir(&format!("tls-{name}"));
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl (Debian package `openssl`)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let key = format!("{ca}.key");
            let pem = format!("{ca}.pem");
            let subj = format!("/CN=regcenter test {ca}");
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            openssl(&args);
        }
        // rustls refuses a self-signed CA certificate used as the server's
        // own: the server gets a leaf signed by the CA.
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&args);
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// A registry on 127.0.0.1 serving HTTPS with the leaf.
    fn server(&self) -> RegistryServer {
        RegistryServer::builder()
            .addr("127.0.0.1:0")
            .threads(2)
            .ttl(Duration::from_secs(5))
            .tls(self.path("leaf.pem"), self.path("leaf.key"))
            .start()
            .unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lines of a child's stream, read on a thread, so a test can wait for
/// one with a deadline.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; all lines read so far.
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {needle:?} within {within:?}; got {seen:?}"),
        }
    }
}

#[test]
fn registration_listing_and_watch_over_https() {
    let certs = Certs::new("e2e");
    let s = certs.server();
    let url = s.url().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = certs.path("ca.pem");

    // Registration: a heartbeat's first beat is accepted before start returns.
    let hb = Heartbeat::builder(&url, "tcp@127.0.0.1:7001")
        .service("arith")
        .ca_file(&ca)
        .start()
        .unwrap();
    assert_eq!(hb.beats(), 1, "the first beat over https was not accepted");
    assert_eq!(s.registry().alive("arith"), vec!["tcp@127.0.0.1:7001"]);

    // Listing: a discovery, and the binary.
    let d = RegistryDiscovery::builder(&url)
        .service("arith")
        .ca_file(&ca)
        .build()
        .unwrap();
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), vec!["tcp@127.0.0.1:7001"]);
    let ca_arg = certs.path_str("ca.pem");
    let out = regcenter(&[
        "list",
        "--registry",
        &url,
        "--service",
        "arith",
        "--ca-file",
        &ca_arg,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tcp@127.0.0.1:7001\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = regcenter(&[
        "list",
        "--registry",
        &url,
        "--service",
        "arith",
        "--json",
        "--ca-file",
        &ca_arg,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"addr\":\"tcp@127.0.0.1:7001\""),
        "{out:?}"
    );

    // Watch: a watching discovery and `regcenter watch` see a new server.
    let w = RegistryDiscovery::builder(&url)
        .service("arith")
        .ca_file(&ca)
        .watch(true)
        .build()
        .unwrap();
    wait_until("the watch's first list", Duration::from_secs(10), || {
        w.get_all().is_ok_and(|l| l.len() == 1)
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args([
            "watch",
            "--registry",
            &url,
            "--service",
            "arith",
            "--ca-file",
            &ca_arg,
        ])
        .env("REGCENTER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    wait_for_line(&lines, "tcp@127.0.0.1:7001", Duration::from_secs(10));
    let second = Heartbeat::builder(&url, "tcp@127.0.0.1:7002")
        .service("arith")
        .ca_file(&ca)
        .start()
        .unwrap();
    wait_for_line(&lines, "tcp@127.0.0.1:7002", Duration::from_secs(10));
    wait_until(
        "the watching discovery to see 7002",
        Duration::from_secs(10),
        || w.get_all().is_ok_and(|l| l.len() == 2),
    );
    let _ = child.kill();
    let _ = child.wait();

    // Deregistration: the heartbeat's own on stop, and a one-off one.
    second.stop().unwrap();
    assert_eq!(s.registry().alive("arith"), vec!["tcp@127.0.0.1:7001"]);
    let options = CallOptions::new().ca_file(&ca);
    assert!(regcenter::deregister_with(&url, "arith", "tcp@127.0.0.1:7001", &options).unwrap());
    assert!(s.registry().alive("arith").is_empty());
    drop(hb);
    w.stop().unwrap();
    s.shutdown().unwrap();
}

#[test]
fn a_client_without_the_ca_fails_with_a_clear_error() {
    let certs = Certs::new("noca");
    let s = certs.server();
    let url = s.url().to_string();
    // Neither the public roots nor another CA vouch for the server.
    for ca in [None, Some(certs.path("other-ca.pem"))] {
        let mut b = RegistryDiscovery::builder(&url);
        if let Some(ca) = &ca {
            b = b.ca_file(ca);
        }
        let err = b.build().unwrap().refresh().unwrap_err();
        let msg = error_chain(&err);
        assert!(
            msg.contains("TLS handshake failed") && msg.contains("--ca-file"),
            "{ca:?}: {msg}"
        );
        assert!(msg.contains("UnknownIssuer"), "{msg}");
    }
    let out = regcenter(&["list", "--registry", &url]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A CA file that is not one is a configuration error, exit 2.
    let key = certs.path_str("ca.key");
    let out = regcenter(&["list", "--registry", &url, "--ca-file", &key]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("regcenter: --ca-file: "), "{err}");
    assert!(err.contains("holds no certificate"), "{err}");
    s.shutdown().unwrap();
}

#[test]
fn bad_certificate_or_key_files_refuse_the_start_with_exit_2() {
    let certs = Certs::new("badfiles");
    let p = |n: &str| certs.path_str(n);
    let missing = p("missing.pem");
    for (cert, key, flag, cause) in [
        (
            missing.clone(),
            p("leaf.key"),
            "--tls-cert",
            "reading it failed",
        ),
        (
            p("leaf.pem"),
            missing.clone(),
            "--tls-key",
            "reading it failed",
        ),
        (
            p("leaf.key"),
            p("leaf.key"),
            "--tls-cert",
            "holds no certificate",
        ),
        (
            p("leaf.pem"),
            p("leaf.pem"),
            "--tls-key",
            "holds no usable private key",
        ),
        (
            p("leaf.pem"),
            p("ca.key"),
            "--tls-key",
            "is not the key of the certificate",
        ),
    ] {
        let out = regcenter(&[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cert} {key}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("regcenter: {flag}: ")), "{err}");
        assert!(err.contains(cause), "{err}");
    }
    let out = regcenter(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        &p("leaf.pem"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // The library says which setting, and starts nothing.
    let err = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .tls(certs.path("leaf.pem"), certs.path("other-ca.key"))
        .start()
        .unwrap_err();
    assert!(
        matches!(
            err,
            regcenter::Error::InvalidConfig {
                setting: "tls_key",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Reads until the server closes; true when it did within `within`.
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if started.elapsed() >= within {
            return false;
        }
    }
}

#[test]
fn a_silent_or_closing_tls_client_holds_nothing() {
    let certs = Certs::new("hostile");
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .header_timeout(Duration::from_millis(500))
        .tls(certs.path("leaf.pem"), certs.path("leaf.key"))
        .start()
        .unwrap();
    let addr = s.local_addr();
    let relays = format!("rc{}-tlsc", addr.port());
    let ca = certs.path("ca.pem");

    // Opens TLS and sends nothing: while it waits, others are served, and
    // it is closed when the handshake time (the header timeout) is up.
    let mut silent = TcpStream::connect(addr).unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .ca_file(&ca)
        .build()
        .unwrap();
    d.refresh().unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)),
        "a silent TLS client was not closed"
    );

    // A close_notify alert as its first 7 bytes: rustls 0.20 (tiny_http's
    // `ssl-rustls`) spins a thread on it forever. Here the relay ends.
    let mut closing = TcpStream::connect(addr).unwrap();
    closing
        .write_all(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00])
        .unwrap();
    assert!(
        closed_within(&mut closing, Duration::from_secs(10)),
        "a close_notify during the handshake did not end the connection"
    );

    // Part of a ClientHello, then nothing: closed at the handshake time.
    let mut partial = TcpStream::connect(addr).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .unwrap();
    assert!(
        closed_within(&mut partial, Duration::from_secs(10)),
        "a partial handshake was not closed"
    );

    d.refresh().unwrap();
    // Its kept-alive connection goes with it: then no relay is left.
    drop(d);
    wait_until("every relay thread to end", Duration::from_secs(10), || {
        threads_named(&relays) == 0
    });
    s.shutdown().unwrap();
}

/// A TLS client of our own, to send what no well-behaved client sends.
fn tls_client(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_over(TcpStream::connect(addr).unwrap(), ca)
}

/// The same over a connection made by the caller (a small receive buffer).
fn tls_over(tcp: TcpStream, ca: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn the_connection_guard_works_through_tls() {
    let certs = Certs::new("guard");
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .header_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .tls(certs.path("leaf.pem"), certs.path("leaf.key"))
        .start()
        .unwrap();
    let ca = certs.path("ca.pem");

    // A request head that never completes: answered 408, encrypted.
    let mut slow = tls_client(s.local_addr(), &ca);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    // A kept-alive connection left idle is closed.
    let mut idle = tls_client(s.local_addr(), &ca);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "an idle TLS connection was not closed"
    );
    s.shutdown().unwrap();
}

#[test]
fn a_token_beyond_loopback_without_tls_warns_that_it_travels_in_clear() {
    let certs = Certs::new("warn");
    let token = certs.path("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token = token.to_str().unwrap().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--token-file",
            token.as_str(),
        ];
        args.extend(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_regcenter"))
            .args(&args)
            .env("REGCENTER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = wait_for_line(
            &lines_of(child.stderr.take().unwrap()),
            "regcenter serving",
            Duration::from_secs(10),
        );
        let _ = child.kill();
        let _ = child.wait();
        lines
    };
    let plain = serve(&[]);
    assert!(
        plain
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("clear text")),
        "{plain:?}"
    );
    let (cert, key) = (certs.path_str("leaf.pem"), certs.path_str("leaf.key"));
    let secure = serve(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(
        !secure.iter().any(|l| l.contains("clear text")),
        "{secure:?}"
    );
}

#[test]
fn shutdown_closes_tls_connections_kept_alive_or_in_handshake() {
    let certs = Certs::new("stop");
    // The default header timeout (10 s) bounds a handshake; a stop must not
    // wait for it.
    let s = certs.server();
    let threads = format!("rc{}-tls", s.local_addr().port());
    let mut kept = tls_client(s.local_addr(), &certs.path("ca.pem"));
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut silent = TcpStream::connect(s.local_addr()).unwrap();
    wait_until("both relays", Duration::from_secs(10), || {
        threads_named(&format!("{threads}c")) == 2
    });
    let started = Instant::now();
    s.shutdown().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop waited {:?}",
        started.elapsed()
    );
    assert_eq!(threads_named(&threads), 0, "a TLS thread outlived the stop");
    let mut rest = Vec::new();
    let _ = kept.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(closed_within(&mut silent, Duration::from_secs(10)));
}

/// An etcd serving its client URL (and so its JSON gateway) over HTTPS
/// with the test's certificate; stopped by its PID on drop.
#[cfg(feature = "etcd")]
struct TlsEtcd {
    child: std::process::Child,
    url: String,
}

#[cfg(feature = "etcd")]
impl Drop for TlsEtcd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[cfg(feature = "etcd")]
#[test]
fn the_etcd_backend_over_https() {
    let Some(etcd) = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is missing under CI: .ci/run installs it"
        );
        eprintln!("SKIPPED: etcd is not installed; the etcd-over-https test did not run");
        return;
    };
    let certs = Certs::new("etcd");
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (c, p) = (port(), port());
    let url = format!("https://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = Command::new(etcd)
        .args(["--name", "t", "--data-dir"])
        .arg(certs.path("etcd-data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("t={peer}")])
        .arg("--cert-file")
        .arg(certs.path("leaf.pem"))
        .arg("--key-file")
        .arg(certs.path("leaf.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd = TlsEtcd { child, url };
    let ep = [etcd.url.as_str()];
    let ca = certs.path("ca.pem");
    let mut reg = None;
    wait_until(
        "a registration in etcd over https",
        Duration::from_secs(30),
        || {
            reg = regcenter::EtcdRegistration::builder(&ep, "tcp@127.0.0.1:7001")
                .service("arith")
                .ca_file(&ca)
                .start()
                .ok();
            reg.is_some()
        },
    );
    let d = RegistryDiscovery::etcd(&ep)
        .service("arith")
        .ca_file(&ca)
        .build()
        .unwrap();
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), vec!["tcp@127.0.0.1:7001"]);
    // Without the CA, the same endpoint is refused.
    let err = RegistryDiscovery::etcd(&ep)
        .service("arith")
        .build()
        .unwrap()
        .refresh()
        .unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    reg.unwrap().stop().unwrap();
    drop(etcd);
}

#[test]
fn a_tls_client_that_never_reads_holds_no_relay_once_cut() {
    let certs = Certs::new("noread");
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .header_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .tls(certs.path("leaf.pem"), certs.path("leaf.key"))
        .start()
        .unwrap();
    let addr = s.local_addr();
    let relays = format!("rc{}-tlsc", addr.port());
    let ca = certs.path("ca.pem");
    // A small receive buffer, so that a few answers fill it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c = tls_over(sock.into(), &ca);
    // Many big answers asked for at once, none read.
    for i in 0..20_000u32 {
        let addr = format!("tcp@10.{}.{}.1:7000", i / 256, i % 256);
        s.registry().put("big", &addr).unwrap();
    }
    let many = "GET /myRPC/registry/big?format=text HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
    c.write_all(many.as_bytes()).unwrap();
    c.flush().unwrap();
    wait_until("the relay to start", Duration::from_secs(10), || {
        threads_named(&relays) == 1
    });
    // The guard cuts the loopback side of a connection whose answer is
    // not read (its write limit, 10 s); the relay must end with it, also
    // while its client, still connected, reads nothing.
    wait_until(
        "the relay of a client that never reads to end",
        Duration::from_secs(40),
        || threads_named(&relays) == 0,
    );
    drop(c);
    s.shutdown().unwrap();
}
