use super::*;

/// Parses without the process environment, so a stray `WAPING__…` variable cannot change a test.
fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(s, "test.toml", [])
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse_env(s: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::parse_with_env(s, "test.toml", env(vars))
}

/// The problems of an invalid text.
fn problems_env(s: &str, vars: &[(&str, &str)]) -> Vec<Problem> {
    match parse_env(s, vars) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn problems(s: &str) -> Vec<Problem> {
    problems_env(s, &[])
}

/// `path: message` per problem, to search for expected text.
fn joined(p: &[Problem]) -> String {
    p.iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

fn at(line: usize, column: usize) -> Option<Location> {
    Some(Location::Line { line, column })
}

fn env_at(var: &str) -> Option<Location> {
    Some(Location::Env { var: var.into() })
}

/// (path, location) of each problem, in report order.
fn where_(p: &[Problem]) -> Vec<(&str, Option<Location>)> {
    p.iter().map(|p| (p.path.as_str(), p.location.clone())).collect()
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
    let p = problems("[limits]\nrate_per_second = \"fast\"\n");
    assert_eq!(where_(&p), [("limits.rate_per_second", at(2, 1))], "{p:?}");
    assert!(p[0].message.contains("expected u32"), "{p:?}");
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
    let problems = problems(text);
    let joined = joined(&problems);
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
    // Each is located at its entry: keys at their key, array elements at the element.
    let find = |path: &str| {
        problems
            .iter()
            .filter(|p| p.path == path)
            .map(|p| p.location.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(find("server.max_streams"), [at(3, 1)]);
    assert_eq!(find("limits.burst"), [at(6, 1)]);
    assert_eq!(find("upstream.sim.failure_rate"), [at(8, 1)]);
    assert_eq!(find("workspaces[0].devices[1]"), [at(11, 18)]);
    assert_eq!(find("workspaces[0].devices[2]"), [at(11, 24)]);
    assert_eq!(find("workspaces[0].keys[0].hash"), [at(14, 1)]);
    assert_eq!(find("workspaces[1].id"), [at(16, 1), at(16, 1)]);
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
fn bad_toml_syntax_is_reported_with_its_position() {
    let p = problems("[server\n");
    assert_eq!(where_(&p), [("", at(1, 8))], "{p:?}");
    assert!(p[0].message.contains("unclosed table"), "{p:?}");
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
    let problems = problems(text);
    let joined = joined(&problems);
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

// --- located problems and environment overrides (issue 7) ---

#[test]
fn three_mistakes_of_different_kinds_are_three_located_problems() {
    let text = "[server]\nmax_streams = 0\n[limits]\nburst = \"fast\"\nrate_per_second = 5\n[log]\ncolour = \"auto\"\n";
    let p = problems(text);
    assert_eq!(
        where_(&p),
        [
            ("server.max_streams", at(2, 1)),
            ("limits.burst", at(4, 1)),
            ("log.colour", at(7, 1)),
        ],
        "{p:#?}"
    );
    assert!(p[1].message.contains("invalid type: string \"fast\""), "{p:#?}");
    assert!(p[2].message.starts_with("unknown field `colour`"), "{p:#?}");
    // The values that were fine still count: rate_per_second is not reported.
    let e = parse(text).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 3, "{e}");
    assert_eq!(
        e.lines().next(),
        Some("test.toml:2:1: server.max_streams: 0 is outside 1..=256")
    );
}

#[test]
fn a_bad_enum_value_and_a_type_too_large_are_structural_problems() {
    let p = problems("[log]\nformat = \"yaml\"\n[server]\nmax_streams = 70000\n");
    assert_eq!(
        where_(&p),
        [("log.format", at(2, 1)), ("server.max_streams", at(4, 1))],
        "{p:#?}"
    );
    assert!(p[0].message.contains("unknown variant `yaml`"), "{p:#?}");
}

#[test]
fn a_missing_required_workspace_key_and_a_range_error_are_both_reported() {
    let text = "\
[limits]
rate_per_second = 0
[[workspaces]]
id = \"a\"
[[workspaces]]
burst = 3
[[workspaces]]
id = \"c\"
burst = 0
";
    let p = problems(text);
    // The second workspace is cut out to go on; the third keeps its index as written.
    assert_eq!(
        where_(&p),
        [
            ("limits.rate_per_second", at(2, 1)),
            ("workspaces[1].id", at(5, 1)),
            ("workspaces[2].burst", at(9, 1)),
        ],
        "{p:#?}"
    );
    assert_eq!(p[1].message, "required key is missing");
}

#[test]
fn a_missing_key_of_an_api_key_entry_is_located_at_its_header() {
    let p = problems("[[workspaces]]\nid = \"a\"\n[[workspaces.keys]]\nid = \"0123456789abcdef\"\n");
    assert_eq!(where_(&p), [("workspaces[0].keys[0].hash", at(3, 1))], "{p:#?}");
}

#[test]
fn a_key_cut_out_for_its_type_is_not_also_reported_missing_or_required() {
    // `id = 5`: one problem, not also "missing id".
    let p = problems("[[workspaces]]\nid = 5\n");
    assert_eq!(where_(&p), [("workspaces[0].id", at(2, 1))], "{p:#?}");
    // tls_key's wrong type is the problem; "tls_key required with tls_cert" would be noise.
    let p = problems("[server]\ntls_cert = \"/c.pem\"\ntls_key = 5\n");
    assert_eq!(where_(&p), [("server.tls_key", at(3, 1))], "{p:#?}");
}

#[test]
fn unknown_keys_inside_an_audit_sink_are_located() {
    // Sinks are an internally tagged enum: serde's path stops at the sink, the key is found.
    let p = problems("[[audit.sinks]]\ntype = \"file\"\nbogus = 1\n");
    assert_eq!(where_(&p), [("audit.sinks[0].bogus", at(3, 1))], "{p:#?}");
    let p = problems("[[audit.sinks]]\ntype = \"carrier-pigeon\"\n");
    assert_eq!(where_(&p), [("audit.sinks[0].type", at(2, 1))], "{p:#?}");
}

#[test]
fn several_syntax_errors_are_all_reported_in_file_order() {
    let p = problems("[server\nmax_streams = 1\n[limits]\nburst = \nrate_per_second = 3 4\n");
    let lines: Vec<_> = p
        .iter()
        .map(|p| match p.location {
            Some(Location::Line { line, .. }) => line,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(lines, [1, 4, 5], "{p:#?}");
    assert!(p.iter().all(|p| p.path.is_empty()), "{p:#?}");
    let e = parse("a = 1\na = 2\n").unwrap_err().to_string();
    assert!(e.starts_with("test.toml:2:1: duplicate key"), "{e}");
}

#[test]
fn many_mistakes_stop_after_the_cap() {
    let text: String = (0..150).map(|i| format!("bogus{i} = 1\n")).collect();
    let p = problems(&text);
    assert_eq!(p.len(), 101, "100 located problems and the note");
    assert!(p[100].message.contains("stopped after 100"), "{:?}", p[100]);
}

#[test]
fn validate_keeps_reporting_unlocated_problems() {
    let mut c = Config::default();
    c.limits.burst = 0;
    c.server.max_streams = 0;
    let Err(ConfigError::Invalid { file, problems }) = c.validate("generated") else {
        panic!("expected Invalid")
    };
    assert_eq!(file, "generated");
    assert_eq!(
        where_(&problems),
        [("server.max_streams", None), ("limits.burst", None)]
    );
    assert_eq!(
        ConfigError::Invalid { file, problems }.to_string(),
        "generated: server.max_streams: 0 is outside 1..=256\ngenerated: limits.burst: 0 is outside 1..=10000000"
    );
}

#[test]
fn env_overrides_set_numbers_addresses_booleans_and_new_tables() {
    let c = parse_env(
        "[limits]\nrate_per_second = 5\nburst = 0\n",
        &[
            ("WAPING__LIMITS__RATE_PER_SECOND", "50"),
            // Fixes the file's out-of-range value: the environment wins.
            ("WAPING__LIMITS__BURST", "70"),
            ("WAPING__SERVER__LISTEN", "0.0.0.0:7500"),
            ("WAPING__METRICS__ENABLED", "false"),
            ("WAPING__UPSTREAM__SIM__LATENCY_MS", " 5 "),
            ("waping__log__level", "info,hyper=warn"),
            ("WAPING__SERVER__TLS_NAMES", "[\"a.example\", \"b.example\"]"),
            // Upper-case map keys survive inside a TOML value (names are lowercased).
            ("WAPING__RETRY__CODES", "{UPSTREAM_TIMEOUT = {permanent = true}}"),
            // Not overrides: single underscore.
            ("WAPING_CONFIG", "/nowhere.toml"),
            ("WAPING_LIMITS_BURST", "1"),
        ],
    )
    .unwrap();
    assert_eq!(c.limits.rate_per_second, 50);
    assert_eq!(c.limits.burst, 70);
    assert_eq!(c.server.listen, "0.0.0.0:7500".parse().unwrap());
    assert!(!c.metrics.enabled);
    assert_eq!(c.upstream.sim.latency_ms, 5);
    assert_eq!(c.log.level, "info,hyper=warn");
    assert_eq!(c.server.tls_names, ["a.example", "b.example"]);
    assert!(c.retry.codes["UPSTREAM_TIMEOUT"].permanent);
}

#[test]
fn env_overrides_apply_to_the_defaults_and_are_reported() {
    let r = Config::parse_report(
        "",
        "<defaults>",
        env(&[
            ("WAPING__AUDIT__SPOOL_MAX_BYTES", "2097152"),
            ("WAPING__JOURNAL__SYNC", "none"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(r.config.audit.spool_max_bytes, 2_097_152);
    assert_eq!(r.config.journal.sync, JournalSync::None);
    assert_eq!(
        r.env_overrides,
        ["WAPING__AUDIT__SPOOL_MAX_BYTES", "WAPING__JOURNAL__SYNC"]
    );
}

#[test]
fn env_problems_name_their_variable() {
    let p = problems_env(
        "[limits]\nburst = 0\n",
        &[
            ("WAPING__LIMITS__BRUST", "3"),
            ("WAPING__LIMITS__RATE_PER_SECOND", "fast"),
            ("WAPING__SERVER__MAX_STREAMS", "0"),
            ("WAPING__NOPE__X", "1"),
            ("WAPING__LIMITS____BURST", "1"),
        ],
    );
    assert_eq!(
        where_(&p),
        [
            ("limits.burst", at(2, 1)),
            ("limits.brust", env_at("WAPING__LIMITS__BRUST")),
            (
                "limits.rate_per_second",
                env_at("WAPING__LIMITS__RATE_PER_SECOND")
            ),
            ("", env_at("WAPING__LIMITS____BURST")),
            ("nope", env_at("WAPING__NOPE__X")),
            ("server.max_streams", env_at("WAPING__SERVER__MAX_STREAMS")),
        ],
        "{p:#?}"
    );
    let text = ConfigError::Invalid {
        file: "test.toml".into(),
        problems: p,
    }
    .to_string();
    assert!(
        text.contains(
            "env WAPING__LIMITS__RATE_PER_SECOND: limits.rate_per_second: invalid type: string \"fast\""
        ),
        "{text}"
    );
    assert!(
        text.contains("env WAPING__LIMITS__BRUST: limits.brust: unknown field `brust`"),
        "{text}"
    );
}

#[test]
fn env_overrides_index_existing_workspaces_only() {
    let text = "[[workspaces]]\nid = \"a\"\n[[workspaces]]\nid = \"b\"\n";
    let c = parse_env(text, &[("WAPING__WORKSPACES__1__RATE_PER_SECOND", "9")]).unwrap();
    assert_eq!(c.workspaces[1].rate_per_second, Some(9));
    assert_eq!(c.workspaces[0].rate_per_second, None);
    // A range error in an overridden workspace field is located at the variable.
    let p = problems_env(text, &[("WAPING__WORKSPACES__0__BURST", "0")]);
    assert_eq!(
        where_(&p),
        [("workspaces[0].burst", env_at("WAPING__WORKSPACES__0__BURST"))]
    );

    let p = problems_env(text, &[("WAPING__WORKSPACES__2__BURST", "1")]);
    assert_eq!(
        where_(&p),
        [("workspaces", env_at("WAPING__WORKSPACES__2__BURST"))],
        "{p:#?}"
    );
    assert!(
        p[0].message
            .contains("index 2 does not exist (workspaces has 2 entries)"),
        "{p:#?}"
    );
    let p = problems_env(text, &[("WAPING__WORKSPACES__FIRST__BURST", "1")]);
    assert!(p[0].message.contains("must be an index"), "{p:#?}");
    // No workspaces in the file: the whole array may still be given as TOML.
    let c = parse_env("", &[("WAPING__WORKSPACES", "[{id = \"x\", burst = 4}]")]).unwrap();
    assert_eq!(c.workspaces[0].id, "x");
    assert_eq!(c.workspaces[0].burst, Some(4));
    let p = problems_env("", &[("WAPING__WORKSPACES__0__BURST", "1")]);
    assert_eq!(
        where_(&p),
        [("workspaces", env_at("WAPING__WORKSPACES__0__BURST"))],
        "{p:#?}"
    );
    assert!(
        p[0].message
            .contains("index 0 does not exist (workspaces is not in the file)"),
        "{p:#?}"
    );
}

#[test]
fn env_cannot_descend_into_a_scalar() {
    let p = problems_env("[log]\nlevel = \"info\"\n", &[("WAPING__LOG__LEVEL__X", "1")]);
    assert_eq!(
        where_(&p),
        [("log.level", env_at("WAPING__LOG__LEVEL__X"))],
        "{p:#?}"
    );
    assert!(p[0].message.contains("is a string, not a table"), "{p:#?}");
}

#[test]
fn env_problems_inside_an_inline_table_value_are_located_at_the_variable() {
    let p = problems_env("", &[("WAPING__LIMITS", "{burst = 0, rate_per_second = \"x\"}")]);
    assert_eq!(
        where_(&p),
        // Structural before semantic within one variable.
        [
            ("limits.rate_per_second", env_at("WAPING__LIMITS")),
            ("limits.burst", env_at("WAPING__LIMITS")),
        ],
        "{p:#?}"
    );
}
// --- end located problems and environment overrides ---
