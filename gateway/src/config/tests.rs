use super::*;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s, "test.toml")
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn documented_file_matches_the_code_defaults() {
    // config/waping-gateway.toml documents every option with its default;
    // this keeps the document and the code from drifting apart.
    let text = include_str!("../../../config/waping-gateway.toml");
    assert_eq!(parse(text).unwrap(), Config::default());
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
    let s = e.to_string();
    assert!(s.contains("lisen"), "{s}");
    let e = parse("[limits]\nrate_per_second = \"fast\"\n").unwrap_err();
    match e {
        ConfigError::Parse { path, .. } => assert_eq!(path, "limits.rate_per_second"),
        other => panic!("{other}"),
    }
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = r#"
[server]
max_streams = 0
max_frame_len = 10
[limits]
burst = 0
[upstream.sim]
failure_rate = 1.5
[[workspaces]]
id = "Bad Id"
devices = ["ok", "ok", "no/slash"]
[[workspaces.keys]]
id = "xyz"
hash = "md5:00"
[[workspaces]]
id = "Bad Id"
"#;
    let ConfigError::Invalid { problems, .. } = parse(text).unwrap_err() else {
        panic!("expected Invalid")
    };
    let joined = problems.join("\n");
    for needle in [
        "server.max_streams",
        "server.max_frame_len",
        "limits.burst",
        "upstream.sim.failure_rate",
        "workspaces[0].id",
        "workspaces[0].devices[1]: duplicate",
        "workspaces[0].devices[2]",
        "workspaces[0].keys[0].id",
        "workspaces[0].keys[0].hash",
        "workspaces[1].id: duplicate",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    assert_eq!(problems.len(), 11, "{joined}");
}

#[test]
fn tls_cert_and_key_go_together() {
    let e = parse("[server]\ntls_cert = \"/x.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.tls_key"), "{e}");
}

#[test]
fn workspace_overrides_apply() {
    let c = parse(
        "[limits]\nrate_per_second = 5\n[[workspaces]]\nid = \"a\"\nburst = 7\n[[workspaces]]\nid = \"b\"\nrate_per_second = 9\n",
    )
    .unwrap();
    assert_eq!(c.workspace_limits(&c.workspaces[0]), (5, 7, 1));
    assert_eq!(c.workspace_limits(&c.workspaces[1]), (9, 100, 1));
}

#[test]
fn bad_toml_syntax_is_a_parse_error() {
    assert!(matches!(parse("[server\n"), Err(ConfigError::Parse { .. })));
}

// --- [pacing] (account safety, issue 4) ---

#[test]
fn pacing_unknown_fields_are_refused_with_their_path() {
    let e = parse("[pacing]\nmin_intervall_ms = 1\n").unwrap_err().to_string();
    assert!(e.contains("min_intervall_ms"), "{e}");
    let e = parse("[[workspaces]]\nid = \"a\"\n[workspaces.pacing]\ndaily_capp = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("daily_capp"), "{e}");
}

#[test]
fn pacing_problems_are_all_reported_with_their_paths() {
    let text = r#"
[pacing]
jitter_ms = 3600001
bucket_burst = 0
warmup_start = 2000
warmup_growth = 0.5
throttle_pause_ms = 10
throttle_pause_max_ms = 5
typing_min_ms = 100
typing_max_ms = 50
contact_book_capacity = 0
[[workspaces]]
id = "a"
[workspaces.pacing]
first_contact_burst = 0
daily_cap = 10
[[workspaces]]
id = "b"
[workspaces.pacing]
min_interval_ms = 1
"#;
    let ConfigError::Invalid { problems, .. } = parse(text).unwrap_err() else {
        panic!("expected Invalid")
    };
    let joined = problems.join("\n");
    for needle in [
        "pacing.jitter_ms: 3600001",
        "pacing.bucket_burst: 0",
        "pacing.warmup_start: 2000 is outside 1..=1000",
        "pacing.warmup_growth: 0.5",
        "pacing.throttle_pause_max_ms: 5",
        "pacing.typing_max_ms: 50",
        "pacing.contact_book_capacity: 0",
        "workspaces[0].pacing.first_contact_burst: 0",
        // The workspace's own cap makes the inherited warm-up start invalid there.
        "workspaces[0].pacing.warmup_start: 2000 is outside 1..=10",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    // Inherited mistakes are reported once, at the node level, not again per workspace.
    assert!(!joined.contains("workspaces[0].pacing.jitter_ms"), "{joined}");
    assert!(!joined.contains("workspaces[1]"), "{joined}");
    assert_eq!(problems.len(), 9, "{joined}");
}

#[test]
fn workspace_pacing_merges_overrides_and_honours_device_rate_zero() {
    let c = parse(
        "[pacing]\nmin_interval_ms = 3000\n[[workspaces]]\nid = \"a\"\n[workspaces.pacing]\njitter_ms = 0\ndaily_cap = 0\n\
         [[workspaces]]\nid = \"b\"\n[[workspaces]]\nid = \"off\"\ndevice_rate_per_second = 0\n\
         [[workspaces]]\nid = \"fast\"\ndevice_rate_per_second = 1\n[workspaces.pacing]\nmin_interval_ms = 0\n",
    )
    .unwrap();
    let a = c.workspace_pacing(&c.workspaces[0]).unwrap();
    assert!(a.is_enabled());
    assert_eq!(a.min_interval(), std::time::Duration::from_secs(3));
    assert_eq!(a.jitter(), std::time::Duration::ZERO);
    assert_eq!(a.daily_cap_for_age(0), None);
    let b = c.workspace_pacing(&c.workspaces[1]).unwrap();
    assert_eq!(b.jitter(), std::time::Duration::from_secs(3));
    assert_eq!(b.daily_cap_for_age(0), Some(20));
    assert!(!c.workspace_pacing(&c.workspaces[2]).unwrap().is_enabled());
    // device_rate_per_second stays a floor under the interval.
    let fast = c.workspace_pacing(&c.workspaces[3]).unwrap();
    assert_eq!(fast.min_interval(), std::time::Duration::from_secs(1));
}

#[test]
fn pacing_section_round_trips_through_toml() {
    let c = parse("[[workspaces]]\nid = \"a\"\n[workspaces.pacing]\nwarmup_growth = 2.0\n").unwrap();
    let text = toml::to_string(&c).unwrap();
    assert_eq!(parse(&text).unwrap(), c);
}
// --- end [pacing] ---
