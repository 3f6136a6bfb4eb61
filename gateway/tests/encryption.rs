//! Encryption at rest and crypto-shredding through the real binary.
//!
//! After real traffic (sent messages, dead letters, API keys, an admin token) the whole
//! state directory is searched for every plaintext the run produced: message bodies,
//! recipients, API keys and their secrets, the admin token. None may be found. Then a
//! workspace is deleted and its data key must be gone from the keyring.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Gateway, Ws};
use serde_json::json;

const W: Ws = Ws {
    id: "enc",
    devices: &["e1"],
    rate: 100_000,
    burst: 100_000,
};

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_plaintext_reaches_the_state_directory() {
    let mut gw = Gateway::start_upstream(
        &[W],
        "[upstream.sim]\ntransient_failure_rate = 0.4\nseed = 3\n[retry]\nmax_attempts = 1\n",
        false,
    );
    let owner = gw.create_workspace("enc-api");
    let r = gw.api("POST", "/v1/devices", &owner, Some(json!({"id": "p1"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let sender = {
        let r = gw.api(
            "POST",
            "/v1/keys",
            &owner,
            Some(json!({"name": "s", "role": "sender"})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["key"].as_str().unwrap().to_string()
    };
    let config_key = gw.key("enc");
    // A webhook endpoint: its signing secret is a credential, sealed like the rest (the URL
    // does not resolve here, so the events owed to it stay in the event store too).
    let hook_secret = {
        let r = gw.api(
            "POST",
            "/v1/webhooks",
            &owner,
            Some(json!({"url": "https://hooks.invalid/enc"})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["secret"].as_str().unwrap().to_string()
    };
    let mut needles: Vec<String> = vec![
        hook_secret.clone(),
        hook_secret.trim_start_matches("whsec_").to_string(),
        owner.clone(),
        sender.clone(),
        config_key.clone(),
        gw.admin_token.clone(),
    ];
    for k in [&owner, &sender, &config_key] {
        // The secret is everything after `wpk_<id>_`; it is base64url and may itself hold
        // `_`, so splitting from the right could leave a one-letter "secret" that any binary
        // file contains by chance (this test once failed on the needle "I").
        let secret = k.splitn(3, '_').nth(2).unwrap().to_string();
        assert!(secret.len() >= 40, "{k}");
        needles.push(secret);
    }
    let mut states = std::collections::HashMap::new();
    let run = std::process::id();
    for i in 0..40 {
        let (key, dev) = if i % 2 == 0 {
            (&sender, "p1")
        } else {
            (&config_key, "e1")
        };
        let body = format!("PLAINTEXT-BODY-{run}-{i}-confidential");
        let to = format!("4917{:09}", run as u64 * 100 + i);
        let r = gw.api(
            "POST",
            "/v1/messages",
            key,
            Some(json!({"device": dev, "to": to, "idempotency_key": format!("enc-{i}"), "text": body})),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        *states
            .entry(gw.wait_message(key, &id)["state"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        needles.push(body);
        needles.push(to);
    }
    assert!(
        states.get("dead").copied().unwrap_or(0) > 0,
        "some dead letters to keep bodies: {states:?}"
    );
    assert!(states.get("sent").copied().unwrap_or(0) > 0, "{states:?}");
    // Dead letters are readable through the API (decrypted in memory) ...
    let r = gw.api("GET", "/v1/dead-letters", &config_key, None);
    assert_eq!(r.status, 200, "{}", r.body);
    // ... and after a crash, nothing on disk is.
    gw.kill9();
    let mut all = Vec::new();
    files(&gw.state_dir(), &mut all);
    let mut scanned = 0u64;
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        // Journal segments are preallocated (sparse zeros after the data): skip the tail.
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        let bytes = &bytes[..end];
        scanned += bytes.len() as u64;
        for n in &needles {
            assert!(
                !find(bytes, n.as_bytes()),
                "{} holds the plaintext {n:?}",
                f.display()
            );
        }
    }
    assert!(scanned > 0 && all.iter().any(|f| f.to_string_lossy().contains("journal")));
    // The keyring is private to the gateway's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gw.state_dir().join("keyring.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keyring.json mode {mode:o}");

    // Restart: everything is readable again with the key.
    gw.respawn();
    let r = gw.api("GET", "/v1/dead-letters", &config_key, None);
    assert_eq!(r.status, 200);
    assert!(!r.json()["items"].as_array().unwrap().is_empty(), "{}", r.body);
}

#[tokio::test]
async fn deleting_a_workspace_shreds_its_key_and_data() {
    let mut gw = Gateway::start_upstream(
        &[W],
        "[upstream.sim]\ntransient_failure_rate = 1.0\n[retry]\nmax_attempts = 1\n",
        false,
    );
    let owner = gw.create_workspace("doomed");
    let r = gw.api("POST", "/v1/devices", &owner, Some(json!({"id": "d1"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = gw.api(
        "POST",
        "/v1/messages",
        &owner,
        Some(
            json!({"device": "d1", "to": "4915100000001", "idempotency_key": "k", "text": "to be shredded"}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(gw.wait_message(&owner, &id)["state"], "dead");
    let keyring = std::fs::read_to_string(gw.state_dir().join("keyring.json")).unwrap();
    assert!(keyring.contains("\"doomed\""));

    // The owner confirms by repeating the id; access ends at once.
    let r = gw.api(
        "POST",
        "/v1/deletions",
        &owner,
        Some(json!({"kind": "workspace", "target": "doomed"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.json()["id"].as_str().unwrap().to_string();
    let r = gw.api("GET", "/v1/workspace", &owner, None);
    assert_eq!(r.status, 401, "the owner key died with the workspace: {}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = gw.api(
            "GET",
            &format!("/v1/admin/workspaces/doomed/deletions/{job}"),
            &gw.admin_token,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        if j["state"] == "done" {
            break j;
        }
        assert_ne!(j["state"], "failed", "{j}");
        assert!(std::time::Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["removed"]["data_key_destroyed"], true, "{done}");
    assert_eq!(done["removed"]["devices"], 1, "{done}");
    assert_eq!(done["removed"]["dead_letters"], 1, "{done}");
    let keyring = std::fs::read_to_string(gw.state_dir().join("keyring.json")).unwrap();
    assert!(!keyring.contains("\"doomed\""), "data key still in the keyring");
    let r = gw.api("GET", "/v1/admin/workspaces/doomed", &gw.admin_token, None);
    assert_eq!(r.status, 404);
    // Asking again is idempotent: the workspace is gone, the answer says so.
    let r = gw.api("DELETE", "/v1/admin/workspaces/doomed", &gw.admin_token, None);
    assert_eq!(r.status, 404, "{}", r.body);

    // A restart does not bring it back, and the name can be reused with a fresh key.
    gw.terminate();
    gw.respawn();
    let r = gw.api("GET", "/v1/admin/workspaces", &gw.admin_token, None);
    assert!(!r.body.contains("\"doomed\""), "{}", r.body);
    let owner2 = gw.create_workspace("doomed");
    let r = gw.api("GET", "/v1/dead-letters", &owner2, None);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 0, "{}", r.body);
}

#[test]
fn a_master_key_file_others_can_read_stops_the_gateway_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n[metrics]\nenabled = false\n[api]\nenabled = false\n[security]\nmaster_key_file = {:?}\n",
            dir.path().join("state").display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600") && err.contains("master.key"), "{err}");
    // Fixed, it starts (and is stopped at once).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let runtime = dir.path().join("state").join("runtime.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !runtime.exists() {
        assert!(child.try_wait().unwrap().is_none(), "exited with a 0600 key");
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn rotating_the_master_key_while_the_gateway_runs() {
    let mut gw = Gateway::start(&[W], "");
    let owner = gw.create_workspace("before");
    let key_file = gw.dir.path().join("master.key");
    let old_key = std::fs::read(&key_file).unwrap();
    let bin = env!("CARGO_BIN_EXE_waping-gateway");
    let new_key = gw.dir.path().join("new.key");
    let st = std::process::Command::new(bin)
        .args(["gen-master-key", "--out"])
        .arg(&new_key)
        .status()
        .unwrap();
    assert!(st.success());
    let out = std::process::Command::new(bin)
        .args(["rotate-master-key", "--install", "--config"])
        .arg(gw.dir.path().join("gateway.toml"))
        .arg("--new-key-file")
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rewrapped 2 data key(s)") && said.contains("installed"),
        "{said}"
    );
    // The running gateway keeps serving, and its next keyring change follows the rotation.
    assert_eq!(gw.api("GET", "/v1/workspace", &owner, None).status, 200);
    let after = gw.create_workspace("after");
    let r = gw.api("POST", "/v1/devices", &after, Some(json!({"id": "d"})));
    assert_eq!(r.status, 201, "{}", r.body);
    // A restart opens the keyring with the new key; the old one no longer does.
    gw.terminate();
    gw.respawn();
    assert_eq!(gw.api("GET", "/v1/workspace", &owner, None).status, 200);
    gw.terminate();
    std::fs::write(&key_file, &old_key).unwrap();
    let out = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(gw.dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master key"), "{err}");
}
