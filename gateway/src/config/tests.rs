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
