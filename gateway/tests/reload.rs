//! SIGHUP reload of the real binary: limits change under a live connection, a broken file
//! changes nothing, certificates and client-certificate rules swap for new handshakes while
//! open connections keep working.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Ws};
use waping_client::{ClientIdentity, Connection, FrameStream, Trust};
use waping_protocol::{Body, ErrorCode, Frame, Text};

const SLOW: Ws = Ws {
    id: "slow",
    devices: &["d1"],
    rate: 1,
    burst: 3,
};

fn send(seq: u64) -> Frame {
    Frame::Send {
        seq,
        idempotency_key: Text::from(format!("k-{seq}")),
        device_id: "d1".into(),
        recipient: "4915112345678".into(),
        body: Body::Text(Text::from("hello")),
    }
}

/// Sends SENDs `seqs` on `s` and returns (accepted, refused with RATE_LIMITED); REPORTs are skipped.
async fn burst(s: &mut FrameStream, seqs: std::ops::RangeInclusive<u64>) -> (u64, u64) {
    let n = seqs.clone().count() as u64;
    for seq in seqs {
        s.writer.queue(&send(seq)).unwrap();
    }
    s.writer.flush().await.unwrap();
    let (mut ok, mut limited) = (0, 0);
    while ok + limited < n {
        match common::next_frame(s).await {
            Frame::Accepted { .. } => ok += 1,
            Frame::Rejected { code, .. } if code == ErrorCode::RATE_LIMITED => limited += 1,
            Frame::Report(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (ok, limited)
}

/// Audit records of `action` in the default file sink.
fn audit_records(gw: &Gateway, action: &str) -> Vec<serde_json::Value> {
    let dir = gw.state_dir().join("audit-log");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v["action"] == action
            {
                out.push(v);
            }
        }
    }
    out
}

fn wait_for_audit(gw: &Gateway, action: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = audit_records(gw, action);
        if r.len() >= n {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} {action} record(s) not in the file sink: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_new_limit_reaches_a_live_connection_and_a_broken_file_changes_nothing() {
    let gw = Gateway::start(&[SLOW], "");
    let mut conn = gw.connect("slow").await;
    let mut s = conn.take_control().unwrap();

    // Burst 3 at 1/s: the bucket is empty after three.
    let (ok, limited) = burst(&mut s, 1..=4).await;
    assert_eq!((ok, limited), (3, 1));

    // A broken file that would also raise the limit and drop the key: refused as a whole.
    let r = gw.reload_with(|t| {
        t.replace(
            "rate_per_second = 1\nburst = 3",
            "rate_per_second = 1000\nburst = 1000",
        )
        .replace("[[workspaces.keys]]", "bogus_setting = 1\n[[workspaces.keys]]")
        .replace("hash = ", "hash_typo = ")
    });
    assert_eq!(r["last_result"], "rejected", "{r}");
    assert_eq!(r["rejected"], 1);
    // Still limited on the same connection: at most one token came back per second since.
    let (ok, limited) = burst(&mut s, 5..=14).await;
    assert!(
        limited >= 5,
        "the refused reload raised the limit: {ok} accepted, {limited} limited"
    );
    // The key still works for a new connection.
    let mut again = gw.connect("slow").await;
    drop(again.take_control());
    let refused = wait_for_audit(&gw, "config.reload", 1);
    let rec = &refused[0];
    assert_eq!(rec["outcome"], "failure", "{rec}");
    let problems: Vec<String> = rec["detail"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    let all = problems.join("\n");
    assert!(all.contains("bogus_setting"), "{all}");
    assert!(all.contains("hash"), "{all}");
    assert_eq!(rec["detail"]["applied"].as_array().map(Vec::len), Some(0));

    // The right file (the typo fixed by a rewrite from scratch): applied, and the same
    // connection may now send far beyond the old burst.
    let r = gw.reload_with(|t| {
        t.replace("bogus_setting = 1\n", "")
            .replace("hash_typo = ", "hash = ")
            .replace("[server]\n", "[server]\nmax_connections = 500\n")
    });
    assert_eq!(r["last_result"], "applied", "{r}");
    assert_eq!(
        r["restart_pending"],
        serde_json::json!(["server.max_connections"])
    );
    let (ok, limited) = burst(&mut s, 15..=44).await;
    assert_eq!(
        (ok, limited),
        (30, 0),
        "the new limit did not reach the live connection"
    );
    let records = wait_for_audit(&gw, "config.reload", 2);
    let applied = &records[1];
    assert_eq!(applied["outcome"], "success", "{applied}");
    let names: Vec<&str> = applied["detail"]["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"workspaces[slow].rate_per_second/burst"),
        "{names:?}"
    );
    assert_eq!(
        applied["detail"]["restart_required"],
        serde_json::json!(["server.max_connections"])
    );
    assert_eq!(
        applied["detail"]["config_sha256"].as_str().map(str::len),
        Some(64)
    );
}

#[tokio::test]
async fn keys_follow_the_file_on_reload() {
    let gw = Gateway::start(&[SLOW], "");
    let old_key = gw.key("slow");
    let conn = gw.connect("slow").await;
    // Replace the workspace's key with a new one: the old connection is closed, the old key
    // refused, the new one accepted, without a restart.
    let k = waping_gateway::auth::generate_key();
    let r = gw.reload_with(|t| {
        let start = t.find("[[workspaces.keys]]").unwrap();
        format!(
            "{}[[workspaces.keys]]\nid = \"{}\"\nhash = \"{}\"\nrole = \"sender\"\n",
            &t[..start],
            k.id,
            k.hash
        )
    });
    assert_eq!(r["last_result"], "applied", "{r}");
    tokio::time::timeout(Duration::from_secs(10), conn.quic().closed())
        .await
        .expect("the connection of the removed key was closed");
    let err = Connection::connect(&gw.client_config(&old_key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AUTH_FAILED));
    let mut c = Connection::connect(&gw.client_config(&k.key))
        .await
        .expect("the new key works");
    let mut s = c.take_control().unwrap();
    assert_eq!(burst(&mut s, 1..=1).await, (1, 0));
}

fn self_signed() -> (String, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let fp = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(ck.cert.der())))
    };
    (ck.cert.pem(), ck.key_pair.serialize_pem(), fp)
}

/// A TLS handshake with the HTTPS API trusting only `anchor_pem`; true if it succeeded.
async fn https_trusts(addr: std::net::SocketAddr, anchor_pem: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut anchor_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .is_ok()
}

#[tokio::test]
async fn a_swapped_certificate_is_seen_by_new_clients_while_old_connections_keep_working() {
    let mut gw = Gateway::start(&[SLOW], "");
    // HTTPS for the API too (the harness starts plain HTTP on loopback).
    let cfg = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        cfg.replace("scheme = \"http\"", "scheme = \"https\""),
    )
    .unwrap();
    gw.terminate();
    gw.respawn();
    let tls_dir = gw.state_dir().join("tls");
    let old_pem = std::fs::read_to_string(tls_dir.join("cert.pem")).unwrap();
    assert!(https_trusts(gw.http, &old_pem).await);

    let mut old_conn = gw.connect("slow").await;
    let mut old_stream = old_conn.take_control().unwrap();

    // Renewal in place: same paths, new files, then SIGHUP. Half-way (new key, old
    // certificate) a reload is refused: the pair does not match.
    let (cert, key, fp) = self_signed();
    assert_ne!(fp, gw.pin);
    std::fs::write(tls_dir.join("key.pem"), &key).unwrap();
    let r = gw.reload_with(|t| t);
    assert_eq!(r["last_result"], "rejected", "a mismatched key was taken: {r}");
    assert_eq!(gw.runtime()["fingerprint"], gw.pin.as_str());
    std::fs::write(tls_dir.join("cert.pem"), &cert).unwrap();
    let r = gw.reload_with(|t| t);
    assert_eq!(r["last_result"], "applied", "{r}");
    assert_eq!(gw.runtime()["fingerprint"], fp.as_str());

    // A new client pinned to the old certificate is refused; pinned to the new one, served.
    let err = Connection::connect(&gw.client_config(&gw.key("slow"))).await;
    assert!(err.is_err(), "the old certificate is still served to new clients");
    let mut cfg = gw.client_config(&gw.key("slow"));
    cfg.trust = Trust::parse_pin(&fp).unwrap();
    let mut fresh = Connection::connect(&cfg).await.expect("new certificate served");
    let mut fresh_stream = fresh.take_control().unwrap();
    assert_eq!(burst(&mut fresh_stream, 1..=1).await.0, 1);
    // The connection opened before the swap still sends.
    assert_eq!(burst(&mut old_stream, 2..=2).await.0, 1);
    // HTTPS: new handshakes get the new certificate.
    assert!(!https_trusts(gw.http, &old_pem).await);
    assert!(https_trusts(gw.http, &cert).await);

    // A broken certificate file: the reload is refused and the good certificate stays.
    std::fs::write(tls_dir.join("cert.pem"), "not a certificate").unwrap();
    let r = gw.reload_with(|t| t);
    assert_eq!(r["last_result"], "rejected", "{r}");
    assert_eq!(gw.runtime()["fingerprint"], fp.as_str());
    assert!(https_trusts(gw.http, &cert).await);
    // Put it back so the next start (none here) would find a pair.
    std::fs::write(tls_dir.join("cert.pem"), &cert).unwrap();
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A client certificate signed by `ca`, written to `dir/<name>.{crt,key}`.
fn client_identity(ca: &Ca, dir: &Path, name: &str) -> ClientIdentity {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    ClientIdentity { cert: c, key: k }
}

#[tokio::test]
async fn client_certificates_can_be_required_by_reload_without_dropping_open_connections() {
    let gw = Gateway::start(&[SLOW], "");
    let dir = gw.dir.path().to_path_buf();
    let trusted = ca("it-client-ca");
    let stranger = ca("someone-else");
    std::fs::write(dir.join("client-ca.pem"), trusted.cert.pem()).unwrap();
    let good = client_identity(&trusted, &dir, "edge-1");
    let bad = client_identity(&stranger, &dir, "intruder");
    let key = gw.key("slow");

    let mut before = gw.connect("slow").await;
    let mut before_stream = before.take_control().unwrap();

    let ca_path = dir.join("client-ca.pem").display().to_string();
    let r = gw.reload_with(|t| {
        t.replacen(
            "[server]\n",
            &format!("[server]\nclient_auth = \"required\"\nclient_ca = {ca_path:?}\n"),
            1,
        )
    });
    assert_eq!(r["last_result"], "applied", "{r}");

    let with = |id: Option<&ClientIdentity>| {
        let mut c = gw.client_config(&key);
        c.identity = id.cloned();
        c
    };
    assert!(
        Connection::connect(&with(None)).await.is_err(),
        "no client certificate, yet the handshake passed"
    );
    assert!(
        Connection::connect(&with(Some(&bad))).await.is_err(),
        "a certificate from another CA was accepted"
    );
    let mut ok = Connection::connect(&with(Some(&good)))
        .await
        .expect("trusted client certificate");
    let mut ok_stream = ok.take_control().unwrap();
    assert_eq!(burst(&mut ok_stream, 1..=1).await.0, 1);
    // Opened before the rule: still served.
    assert_eq!(burst(&mut before_stream, 2..=2).await.0, 1);
    // The audit log names the machine: its certificate's fingerprint on auth.success.
    let leaf = std::fs::read(&good.cert).unwrap();
    let der = rustls_pemfile::certs(&mut leaf.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let want = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(der.as_ref())))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !audit_records(&gw, "auth.success")
        .iter()
        .any(|r| r["detail"]["type"] == "client_cert" && r["detail"]["sha256"] == want.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no auth.success with the client certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The API key is still checked: a certificate alone is not a credential.
    let mut wrong_key = with(Some(&good));
    wrong_key.api_key = waping_gateway::auth::generate_key().key;
    let err = Connection::connect(&wrong_key).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AUTH_FAILED));

    // `optional`: no certificate is fine again, a bad one still is not.
    let r = gw.reload_with(|t| t.replace("client_auth = \"required\"", "client_auth = \"optional\""));
    assert_eq!(r["last_result"], "applied", "{r}");
    let mut plain = Connection::connect(&with(None))
        .await
        .expect("optional client auth");
    drop(plain.take_control());
    assert!(Connection::connect(&with(Some(&bad))).await.is_err());
}
